import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type {
  Choice,
  DiscoveredTable,
  PreflightCheck,
  PublicationPlan,
  PublicationRequest,
  TableRef,
} from "../lib/types";
import { SetupPanel, summary } from "./SetupPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { profileView } from "../test/fixtures";

vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands([
    "preflight",
    "runFix",
    "planPublication",
    "discoverTables",
    "captureDefinition",
  ]),
);

const failing: PreflightCheck = {
  id: "replication",
  title: "The role may replicate",
  status: "fail",
  explanation: "Role has no REPLICATION.",
  fix: {
    action: { action: "grantReplication", role: "app" },
    preview: ['ALTER ROLE "app" WITH REPLICATION'],
    warning: null,
    needs: "a superuser",
  },
};

const request = (tables: TableRef[], choices: Choice[] = []): PublicationRequest => ({ publication: "p", tables, choices });

/** The publication check with nothing picked yet: the fix asks for tables. */
const noPublication: PreflightCheck = {
  id: "publication",
  title: 'Publication "p" exists with the tables',
  status: "fail",
  explanation: 'Publication "p" does not exist. Pick the tables.',
  fix: {
    action: { action: "publication", request: request([]), statements: [] },
    preview: [],
    warning: null,
    needs: "the owner of the tables",
  },
};

/** The slot before the first capture: a step the capture's start takes, with no fix. */
const slotStep: PreflightCheck = {
  id: "slot",
  title: 'Slot "s" is ready',
  status: "step",
  explanation: 'Slot "s" does not exist yet: it is created when the capture first starts (after Save and publish).',
  fix: null,
};

const walLevel: PreflightCheck = {
  id: "wal_level",
  title: "wal_level is logical",
  status: "pass",
  explanation: "Logical decoding is on.",
  fix: null,
};

const orders = { schema: "shop", table: "orders" };
const views = { schema: "shop", table: "page_views" };

/** What the engine plans: page_views has no key; its statements follow the choice. */
function planFor(tables: TableRef[], choices: Choice[]): PublicationPlan {
  const picked = (t: TableRef) => tables.some((x) => x.table === t.table);
  const handling = choices.find((c) => c.table === "page_views")?.handling ?? null;
  const statements: string[] = [];
  const main = [orders].filter(picked).map((t) => `"${t.schema}"."${t.table}"`);
  if (picked(views) && handling === "replicaIdentityFull") {
    statements.push('ALTER TABLE "shop"."page_views" REPLICA IDENTITY FULL');
    main.push('"shop"."page_views"');
  }
  if (main.length) statements.push(`CREATE PUBLICATION "p" FOR TABLE ${main.join(", ")}`);
  if (picked(views) && handling === "insertOnly")
    statements.push(`CREATE PUBLICATION "p_insert_only" FOR TABLE "shop"."page_views" WITH (publish = 'insert')`);
  return {
    request: request(tables, choices),
    statements,
    hazards: picked(views)
      ? [
          {
            table: views,
            reason: "no primary key and REPLICA IDENTITY DEFAULT",
            relations: [views],
            refusedNow: false,
            options: ["leaveOut", "replicaIdentityFull", "insertOnly"],
            handling,
          },
        ]
      : [],
    notes: picked(views) ? [`"shop"."page_views": ${handling ?? "undecided"}`] : [],
  };
}

/** A table as discovery reports it: keyed by its primary key, or without a key at all. */
const discovered = (t: TableRef, key: string[]): DiscoveredTable => ({
  ...t,
  oid: 0,
  partitioned: false,
  columns: key.map((name) => ({ name, typeOid: 23, typeName: "integer", nullable: false })),
  key,
  keySource: key.length ? "primaryKey" : "none",
  keyIndex: null,
  replicaIdentity: "default",
  estimatedRows: null,
  sizeBytes: 8192,
  inPublication: false,
  collection: { name: `${t.schema}/${t.table}`, key: key.map((k) => `/${k}`), schema: {} },
});

beforeEach(() => {
  resetBackend();
});

describe("SetupPanel", () => {
  it("shows the SQL before running it, runs only on confirm, and checks again", async () => {
    let fixed = false;
    answer("preflight", async () => [fixed ? { ...failing, status: "pass", fix: null } : failing]);
    answer("runFix", async () => {
      fixed = true;
    });
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    expect((await screen.findByTestId("check-replication-status")).textContent).toBe("Fail");
    await user.click(screen.getByTestId("fix-replication"));
    expect(screen.getByTestId("fix-replication-sql").textContent).toBe('ALTER ROLE "app" WITH REPLICATION');
    expect(callsOf("runFix")).toEqual([]);
    await user.click(screen.getByTestId("fix-replication-run"));
    await waitFor(() => expect(screen.getByTestId("check-replication-status").textContent).toBe("Pass"));
    expect(callsOf("runFix")).toEqual([["p1", failing.fix!.action]]);
    expect(screen.queryByTestId("fix-replication")).toBeNull();
  });

  it("shows a failed fix's error under its Run button, in view, with the kind behind Details", async () => {
    const scrolled: Element[] = [];
    const before = Element.prototype.scrollIntoView;
    Element.prototype.scrollIntoView = function (this: Element) {
      scrolled.push(this);
    };
    try {
      answer("preflight", async () => [failing]);
      answer("runFix", async () => {
        throw { kind: "Permission", message: "must be owner of table t (SQLSTATE 42501)" };
      });
      const user = userEvent.setup();
      render(<SetupPanel profile={profileView()} />);
      await user.click(await screen.findByTestId("fix-replication"));
      await user.click(screen.getByTestId("fix-replication-run"));
      const error = await screen.findByTestId("fix-replication-error");
      // Inside the check whose fix failed, after the button that ran it; nothing at the top of the list.
      expect(screen.getByTestId("check-replication").contains(error)).toBe(true);
      expect(
        screen.getByTestId("fix-replication-run").compareDocumentPosition(error) & Node.DOCUMENT_POSITION_FOLLOWING,
      ).toBeTruthy();
      expect(screen.queryByTestId("setup-error")).toBeNull();
      expect(scrolled.some((element) => element.contains(error))).toBe(true);
      expect(screen.getByTestId("fix-replication-error-message").textContent).toBe("must be owner of table t");
      expect(screen.getByTestId("fix-replication-error-kind").textContent).toBe("Permission");
      expect(screen.getByTestId("fix-replication-error-code").textContent).toBe("SQLSTATE 42501");
      expect(error.textContent).not.toMatch(/form/i);
    } finally {
      Element.prototype.scrollIntoView = before;
    }
  });

  it("says a fix is running on its own Run button, and lets it run again once it failed", async () => {
    answer("preflight", async () => [failing]);
    let fail: (error: unknown) => void = () => {};
    answer("runFix", () => new Promise((_, reject) => (fail = reject)));
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-replication"));
    const run = screen.getByTestId("fix-replication-run") as HTMLButtonElement;
    await user.click(run);
    expect(run.textContent).toBe("Running…");
    expect(run.disabled).toBe(true);
    fail({ kind: "Permission", message: "permission denied to alter role" });
    await screen.findByTestId("fix-replication-error");
    expect(run.textContent).toBe("Run");
    expect(run.disabled).toBe(false);
    await user.click(run);
    // A new run starts without the last one's error.
    expect(screen.queryByTestId("fix-replication-error")).toBeNull();
  });

  it("asks which tables to publish when none are picked, and never offers every table", async () => {
    answer("preflight", async () => [noPublication]);
    answer("discoverTables", async () => [discovered(orders, ["id"]), discovered(views, [])]);
    answer("planPublication", async (_id, tables, choices) => planFor(tables, choices));
    answer("runFix", async () => {});
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-publication"));
    // Nothing is planned, and Run is off, until a table is picked.
    expect(await screen.findByTestId("publish-pick-shop.page_views")).toBeTruthy();
    expect(screen.getByTestId("publication-pick").textContent).toContain("shop.page_views (no primary key)");
    expect((screen.getByTestId("fix-publication-run") as HTMLButtonElement).disabled).toBe(true);
    expect(callsOf("planPublication")).toEqual([]);
    await user.click(screen.getByTestId("publish-pick-shop.orders"));
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe('CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'),
    );
    expect(screen.getByTestId("fix-publication-sql").textContent).not.toContain("ALL TABLES");
    await user.click(screen.getByTestId("fix-publication-run"));
    await waitFor(() => expect(callsOf("runFix")).toHaveLength(1));
    expect(callsOf("runFix")[0]).toEqual([
      "p1",
      { action: "publication", request: request([orders]), statements: ['CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'] },
    ]);
  });

  it("a keyless table starts left out; each choice re-plans and runs exactly what it shows", async () => {
    answer("preflight", async () => [noPublication]);
    answer("discoverTables", async () => [discovered(orders, ["id"]), discovered(views, [])]);
    answer("planPublication", async (_id, tables, choices) => planFor(tables, choices));
    answer("runFix", async () => {});
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-publication"));
    await user.click(await screen.findByTestId("publish-pick-shop.orders"));
    await user.click(screen.getByTestId("publish-pick-shop.page_views"));

    // The hazard is said before anything runs, with the safe choice made.
    const hazard = await screen.findByTestId("hazard-shop.page_views");
    expect(hazard.textContent).toContain("no primary key and REPLICA IDENTITY DEFAULT");
    expect(hazard.textContent).toContain("refuse every UPDATE and DELETE");
    await waitFor(() =>
      expect((screen.getByTestId("choice-shop.page_views-leaveOut") as HTMLInputElement).checked).toBe(true),
    );
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe('CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'),
    );
    // The engine was never asked to plan the table undecided and then run it.
    const lastPlan = callsOf("planPublication").at(-1)!;
    expect(lastPlan[2]).toEqual([{ ...views, handling: "leaveOut" }]);

    await user.click(screen.getByTestId("choice-shop.page_views-insertOnly"));
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe(
        'CREATE PUBLICATION "p" FOR TABLE "shop"."orders";\nCREATE PUBLICATION "p_insert_only" FOR TABLE "shop"."page_views" WITH (publish = \'insert\')',
      ),
    );
    await user.click(screen.getByTestId("choice-shop.page_views-replicaIdentityFull"));
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe(
        'ALTER TABLE "shop"."page_views" REPLICA IDENTITY FULL;\nCREATE PUBLICATION "p" FOR TABLE "shop"."orders", "shop"."page_views"',
      ),
    );
    expect(screen.getByTestId("fix-publication-notes").textContent).toContain("replicaIdentityFull");
    await user.click(screen.getByTestId("fix-publication-run"));
    await waitFor(() => expect(callsOf("runFix")).toHaveLength(1));
    const action = callsOf("runFix")[0][1] as { action: "publication"; request: PublicationRequest; statements: string[] };
    expect(action.request.choices).toEqual([{ ...views, handling: "replicaIdentityFull" }]);
    expect(action.statements).toEqual([
      'ALTER TABLE "shop"."page_views" REPLICA IDENTITY FULL',
      'CREATE PUBLICATION "p" FOR TABLE "shop"."orders", "shop"."page_views"',
    ]);
  });

  it("moves the focus into a fix's preview on Fix…, and Escape closes it back onto its button", async () => {
    answer("preflight", async () => [failing]);
    answer("captureDefinition", async () => null);
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-replication"));
    const preview = screen.getByTestId("fix-replication-preview");
    expect(document.activeElement).toBe(preview);
    expect(preview.getAttribute("aria-label")).toBe(`Fix: ${failing.title}`);
    // Tab goes on to the preview's Run.
    await user.tab();
    expect(document.activeElement).toBe(screen.getByTestId("fix-replication-run"));
    await user.keyboard("{Escape}");
    expect(screen.queryByTestId("fix-replication-preview")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("fix-replication"));
    // Cancel returns the focus the same way.
    await user.click(screen.getByTestId("fix-replication"));
    await user.click(screen.getByTestId("fix-replication-cancel"));
    expect(document.activeElement).toBe(screen.getByTestId("fix-replication"));
    expect(callsOf("runFix")).toEqual([]);
  });

  it("closes the publication fix on Escape, with the focus back on its Fix…", async () => {
    answer("preflight", async () => [noPublication]);
    answer("captureDefinition", async () => null);
    answer("discoverTables", async () => []);
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-publication"));
    expect(document.activeElement).toBe(screen.getByTestId("fix-publication-preview"));
    await user.keyboard("{Escape}");
    expect(screen.queryByTestId("publication-fix")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("fix-publication"));
  });

  it("sums up what fails, and its next step opens the first failing check's fix without running it", async () => {
    answer("preflight", async () => [walLevel, slotStep, failing, noPublication]);
    answer("captureDefinition", async () => null);
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    expect((await screen.findByTestId("setup-summary-text")).textContent).toBe("2 things to fix before you can capture");
    // The summary comes first, above the checklist.
    expect(
      screen.getByTestId("setup-summary").compareDocumentPosition(screen.getByTestId("check-wal_level")) &
        Node.DOCUMENT_POSITION_FOLLOWING,
    ).toBeTruthy();
    const next = screen.getByTestId("setup-next");
    expect(next.textContent).toBe("Go to the first fix");
    expect(screen.queryByTestId("fix-replication-sql")).toBeNull();
    await user.click(next);
    // The first failing check (in list order), its fix's SQL shown, the focus in its preview; nothing ran.
    expect(screen.getByTestId("fix-replication-sql").textContent).toBe('ALTER ROLE "app" WITH REPLICATION');
    expect(document.activeElement).toBe(screen.getByTestId("fix-replication-preview"));
    expect(screen.getByTestId("check-replication").contains(document.activeElement)).toBe(true);
    expect(callsOf("runFix")).toEqual([]);
  });

  it("shows the slot its first start creates as a neutral step with no Fix, and leads on to Tables", async () => {
    answer("preflight", async () => [walLevel, slotStep]);
    answer("captureDefinition", async () => null);
    const goTo = vi.fn();
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} onGoTo={goTo} />);
    const badge = await screen.findByTestId("check-slot-status");
    expect(badge.textContent).toBe("Step");
    expect(badge.getAttribute("data-status")).toBe("step");
    expect(screen.getByTestId("check-slot").className).toBe("check step");
    expect(screen.queryByTestId("fix-slot")).toBeNull();
    // A step is nothing to fix.
    expect(screen.getByTestId("setup-summary-text").textContent).toBe("Ready to capture");
    const next = await screen.findByTestId("setup-next");
    expect(next.textContent).toBe("Go to Tables");
    await user.click(next);
    expect(goTo).toHaveBeenCalledWith("tables");
  });

  it("leads to Capture once tables are saved, and counts warnings without blocking", async () => {
    answer("preflight", async () => [walLevel, { ...slotStep, status: "warn", explanation: "Holds back WAL." }]);
    answer("captureDefinition", async () => ({ profile: "p1", publication: "p", slot: "s", bindings: [] }));
    const goTo = vi.fn();
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} onGoTo={goTo} />);
    expect((await screen.findByTestId("setup-summary-text")).textContent).toBe(
      "Ready to capture (1 warning worth a look)",
    );
    const next = await screen.findByTestId("setup-next");
    expect(next.textContent).toBe("Go to Capture");
    await user.click(next);
    expect(goTo).toHaveBeenCalledWith("capture");
  });

  it("words the summary by count", () => {
    expect(summary([failing])).toBe("1 thing to fix before you can capture");
    expect(summary([failing, failing, noPublication, slotStep])).toBe("3 things to fix before you can capture");
    expect(summary([walLevel, slotStep])).toBe("Ready to capture");
    const warn = { ...walLevel, status: "warn" as const };
    expect(summary([warn, warn])).toBe("Ready to capture (2 warnings worth a look)");
  });
});

describe("SetupPanel: Run as", () => {
  const capture = profileView();
  const owner = profileView({ id: "p2", name: "Shop owner", user: "neondb_owner" });
  const elsewhere = profileView({ id: "p3", name: "Other database", user: "other_owner", database: "other" });
  const ownerFix: PreflightCheck = {
    id: "grants:shop",
    title: 'The role can read schema "shop"',
    status: "fail",
    explanation: 'Role "cdc_role" has no USAGE on the schema.',
    fix: {
      action: { action: "grantSchemaAccess", schema: "shop", role: "cdc_role" },
      preview: ['GRANT USAGE ON SCHEMA "shop" TO "cdc_role"'],
      warning: null,
      needs: "the owner of the schema and of its tables (or a superuser)",
    },
  };

  it("runs as the profile's role by default, says who runs it and what it needs", async () => {
    answer("preflight", async () => [ownerFix]);
    answer("runFix", async () => {});
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner, elsewhere]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as cdc_role");
    // The other choices wait behind a button after Run.
    expect(screen.queryByTestId("run-as")).toBeNull();
    await user.click(screen.getByTestId("run-as-toggle"));
    expect(screen.getByTestId("run-as-needs").textContent).toContain("the owner of the schema");
    expect((screen.getByTestId("run-as-profile") as HTMLInputElement).checked).toBe(true);
    await user.click(screen.getByTestId("fix-grants:shop-run"));
    await waitFor(() => expect(callsOf("runFix")).toHaveLength(1));
    expect(callsOf("runFix")[0]).toStrictEqual(["p1", ownerFix.fix!.action]);
  });

  it("runs as another saved profile for the same database only, then checks again as the profile", async () => {
    let fixed = false;
    answer("preflight", async () => [fixed ? { ...ownerFix, status: "pass", fix: null } : ownerFix]);
    answer("runFix", async () => {
      fixed = true;
    });
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner, elsewhere]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    await user.click(screen.getByTestId("run-as-toggle"));
    await user.click(screen.getByTestId("run-as-other"));
    const select = screen.getByTestId("run-as-other-select") as HTMLSelectElement;
    // Neither the profile itself nor one for another database is offered.
    expect([...select.options].map((o) => o.value)).toEqual(["p2"]);
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as neondb_owner");
    // The SQL shown is the same statements.
    expect(screen.getByTestId("fix-grants:shop-sql").textContent).toBe('GRANT USAGE ON SCHEMA "shop" TO "cdc_role"');
    await user.click(screen.getByTestId("fix-grants:shop-run"));
    await waitFor(() => expect(screen.getByTestId("check-grants:shop-status").textContent).toBe("Pass"));
    expect(callsOf("runFix")).toStrictEqual([["p1", ownerFix.fix!.action, { kind: "otherProfile", profile: "p2" }]]);
    // The checks ran again, for this profile (as its role).
    expect(callsOf("preflight")).toStrictEqual([["p1"], ["p1"]]);
  });

  it("offers no other profile when none is for the same database", async () => {
    answer("preflight", async () => [ownerFix]);
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, elsewhere]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    await user.click(screen.getByTestId("run-as-toggle"));
    expect((screen.getByTestId("run-as-other") as HTMLInputElement).disabled).toBe(true);
    expect(screen.getByTestId("run-as").textContent).toContain("none other for shop on db.example.com:5432");
  });

  it("sends an owner password once and clears it after the run, also when it is refused", async () => {
    answer("preflight", async () => [ownerFix]);
    answer("runFix", async () => {
      throw { kind: "Authentication", message: 'db.example.com:5432: password authentication failed for user "neondb_owner"' };
    });
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    await user.click(screen.getByTestId("run-as-toggle"));
    await user.click(screen.getByTestId("run-as-password"));
    const run = screen.getByTestId("fix-grants:shop-run") as HTMLButtonElement;
    // Not without the role and its password.
    expect(run.disabled).toBe(true);
    expect(screen.getByTestId("run-as-role").textContent).toBe("Name the role to run as");
    await user.type(screen.getByTestId("run-as-user"), "neondb_owner");
    expect(run.disabled).toBe(true);
    const password = screen.getByTestId("run-as-password-input") as HTMLInputElement;
    expect(password.type).toBe("password");
    await user.type(password, "0wner-s3cret");
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as neondb_owner");
    await user.click(run);
    await screen.findByTestId("fix-grants:shop-error");
    expect(callsOf("runFix")).toStrictEqual([
      ["p1", ownerFix.fix!.action, { kind: "password", user: "neondb_owner", password: "0wner-s3cret" }],
    ]);
    // Gone from the form once the run is over; the role stays for the next try.
    expect((screen.getByTestId("run-as-password-input") as HTMLInputElement).value).toBe("");
    expect((screen.getByTestId("run-as-user") as HTMLInputElement).value).toBe("neondb_owner");
    expect((screen.getByTestId("fix-grants:shop-run") as HTMLButtonElement).disabled).toBe(true);
    expect(document.body.textContent).not.toContain("0wner-s3cret");
  });

  it("opens each fix as the profile's role again", async () => {
    answer("preflight", async () => [ownerFix, failing]);
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    await user.click(screen.getByTestId("run-as-toggle"));
    await user.click(screen.getByTestId("run-as-other"));
    await user.click(screen.getByTestId("fix-grants:shop-cancel"));
    await user.click(screen.getByTestId("fix-replication"));
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as cdc_role");
    expect(screen.queryByTestId("run-as")).toBeNull();
  });

  it("offers the owner by itself once the profile's role is refused for lack of rights", async () => {
    answer("preflight", async () => [ownerFix]);
    answer("runFix", async () => {
      throw {
        kind: "Permission",
        message: "permission denied for schema shop (SQLSTATE 42501); this fix needs the owner of the schema. Run it as the owner instead",
      };
    });
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner]} />);
    await user.click(await screen.findByTestId("fix-grants:shop"));
    await user.click(screen.getByTestId("fix-grants:shop-run"));
    await screen.findByTestId("fix-grants:shop-error");
    expect(screen.getByTestId("run-as")).toBeTruthy();
    await user.click(screen.getByTestId("run-as-other"));
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as neondb_owner");
  });

  it("picks the tables to publish from those the owner's profile reads when the profile's role reads none", async () => {
    answer("preflight", async () => [noPublication]);
    answer("discoverTables", async (id) => (id === "p2" ? [discovered(orders, ["id"])] : []));
    answer("planPublication", async (_id, tables, choices) => planFor(tables, choices));
    answer("runFix", async () => {});
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner]} />);
    await user.click(await screen.findByTestId("fix-publication"));
    expect((await screen.findByTestId("publication-pick-none")).textContent).toContain("Role cdc_role can read no table yet");
    expect(screen.queryByTestId("publish-pick-shop.orders")).toBeNull();
    await user.click(screen.getByTestId("run-as-toggle"));
    await user.click(screen.getByTestId("run-as-other"));
    await user.click(await screen.findByTestId("publish-pick-shop.orders"));
    expect(screen.queryByTestId("publication-pick-none")).toBeNull();
    expect(callsOf("discoverTables")).toStrictEqual([["p1"], ["p2"]]);
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe('CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'),
    );
    // Planned for the profile's publication, run as the owner.
    expect(callsOf("planPublication").every(([id]) => id === "p1")).toBe(true);
    await user.click(screen.getByTestId("fix-publication-run"));
    await waitFor(() => expect(callsOf("runFix")).toHaveLength(1));
    expect(callsOf("runFix")[0]?.[2]).toStrictEqual({ kind: "otherProfile", profile: "p2" });
  });

  it("runs the publication fix as the chosen owner profile", async () => {
    answer("preflight", async () => [noPublication]);
    answer("discoverTables", async () => [discovered(orders, ["id"])]);
    answer("planPublication", async (_id, tables, choices) => planFor(tables, choices));
    answer("runFix", async () => {});
    const user = userEvent.setup();
    render(<SetupPanel profile={capture} profiles={[capture, owner]} />);
    await user.click(await screen.findByTestId("fix-publication"));
    await user.click(await screen.findByTestId("publish-pick-shop.orders"));
    await waitFor(() =>
      expect(screen.getByTestId("fix-publication-sql").textContent).toBe('CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'),
    );
    await user.click(screen.getByTestId("run-as-toggle"));
    await user.click(screen.getByTestId("run-as-other"));
    expect(screen.getByTestId("run-as-role").textContent).toBe("Runs as neondb_owner");
    await user.click(screen.getByTestId("fix-publication-run"));
    await waitFor(() => expect(callsOf("runFix")).toHaveLength(1));
    expect(callsOf("runFix")[0]).toStrictEqual([
      "p1",
      { action: "publication", request: request([orders]), statements: ['CREATE PUBLICATION "p" FOR TABLE "shop"."orders"'] },
      { kind: "otherProfile", profile: "p2" },
    ]);
  });
});

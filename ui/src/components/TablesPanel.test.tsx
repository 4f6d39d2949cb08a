import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { DiscoveredTable, PublishPlan, RunStatus } from "../lib/types";
import { TablesPanel } from "./TablesPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { runStatus } from "../test/fixtures";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["discoverTables", "captureDefinition", "planSaveAndPublish", "saveAndPublish", "checkCollectionName", "planPublication"]),
);

const table = (name: string, key: string[]): DiscoveredTable => ({
  oid: 0,
  schema: "public",
  table: name,
  partitioned: false,
  columns: [{ name: "id", typeOid: 23, typeName: "integer", nullable: key.length === 0 }],
  key,
  keySource: key.length ? "primaryKey" : "none",
  keyIndex: null,
  replicaIdentity: "default",
  estimatedRows: 10,
  sizeBytes: 8192,
  inPublication: false,
  collection: { name: `public/${name}`, key: key.map((k) => `/${k}`), schema: { title: `public/${name}` } },
});

/** A plan as the engine makes it for a fresh profile: publication, slot, backfill, start. */
const freshPlan = (statements: string[], backfills: string[]): PublishPlan => ({
  publication: { request: { publication: "p", tables: [], choices: [] }, statements, hazards: [], notes: [] },
  slotExists: false,
  running: false,
  backfills,
  steps: [
    `Update the publication "p": ${statements.join("; ")}.`,
    "Save the capture definition (1 table).",
    'Create the slot "s" with an exported snapshot.',
    ...backfills.map((b) => `Backfill ${b} in that snapshot.`),
    "Start the capture: it streams every change from the slot.",
  ],
});

const streaming = runStatus({ state: "streaming", checkpoint: "0/0" });

beforeEach(() => {
  resetBackend();
  answer("discoverTables", async () => [table("orders", ["id"]), table("events", [])]);
});

describe("TablesPanel", () => {
  it("explains what capturing a table without a key means, and only for such tables", async () => {
    answer("captureDefinition", async () => null);
    render(<TablesPanel profileId="p1" />);
    const note = await screen.findByTestId("keyless-note-public.events");
    expect(note.textContent).toContain("keyed by its position in the stream");
    expect(note.textContent).toContain("replica identity is FULL");
    expect(screen.queryByTestId("keyless-note-public.orders")).toBeNull();
    expect(screen.getByTestId("table-public.orders").textContent).toContain("primary key (id)");
  });

  it("publishes the selected tables with their new names and modes, and shows the SQL that ran", async () => {
    answer("captureDefinition", async () => null);
    answer("planSaveAndPublish", async () => freshPlan(['ALTER PUBLICATION "p" ADD TABLE "public"."orders"'], []));
    answer("saveAndPublish", async () => streaming);
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await screen.findByTestId("tables-panel");
    expect((screen.getByTestId("publish") as HTMLButtonElement).disabled).toBe(true);
    await user.click(screen.getByTestId("select-public.orders"));
    const name = screen.getByTestId("collection-public.orders");
    await user.clear(name);
    await user.type(name, "shop/orders");
    await user.selectOptions(screen.getByTestId("mode-public.orders"), "onlyChanges");
    await user.click(screen.getByTestId("publish"));
    await user.click(await screen.findByTestId("publish-run"));
    await screen.findByTestId("published");
    expect(callsOf("saveAndPublish")).toEqual([
      ["p1", [{ schema: "public", table: "orders", collection: "shop/orders", mode: "onlyChanges", backfill: 0 }], []],
    ]);
    expect(screen.getByTestId("published-sql").textContent).toBe('ALTER PUBLICATION "p" ADD TABLE "public"."orders"');
  });

  it("asks how a selected keyless table is published before Save and publish, and sends the choice", async () => {
    answer("captureDefinition", async () => null);
    answer("planSaveAndPublish", async () =>
      freshPlan(['CREATE PUBLICATION "p_insert_only" FOR TABLE "public"."events"'], ['"public"."events"']),
    );
    answer("saveAndPublish", async () => streaming);
    answer("planPublication", async (_id, tables, choices) => {
      const chosen = choices.find((c) => c.table === "events")?.handling ?? null;
      const picked = tables.some((t) => t.table === "events");
      return {
        request: { publication: "p", tables, choices },
        statements: chosen === "insertOnly" ? ['CREATE PUBLICATION "p_insert_only" FOR TABLE "public"."events"'] : [],
        hazards: picked
          ? [
              {
                table: { schema: "public", table: "events" },
                reason: "no primary key and REPLICA IDENTITY DEFAULT",
                relations: [],
                refusedNow: false,
                options: ["leaveOut", "replicaIdentityFull", "insertOnly"],
                handling: chosen,
              },
            ]
          : [],
        notes: [],
      };
    });
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await user.click(await screen.findByTestId("select-public.events"));
    const hazard = await screen.findByTestId("hazard-public.events");
    expect(hazard.textContent).toContain("refuse every UPDATE and DELETE");
    // Leaving a selected table out is "unselect", not a choice here; nothing is picked for the user.
    expect(screen.queryByTestId("choice-public.events-leaveOut")).toBeNull();
    expect((screen.getByTestId("choice-public.events-insertOnly") as HTMLInputElement).checked).toBe(false);
    expect((screen.getByTestId("publish") as HTMLButtonElement).disabled).toBe(true);
    await user.click(screen.getByTestId("choice-public.events-insertOnly"));
    await waitFor(() =>
      expect(screen.getByTestId("publish-plan-sql").textContent).toBe(
        'CREATE PUBLICATION "p_insert_only" FOR TABLE "public"."events"',
      ),
    );
    await user.click(screen.getByTestId("publish"));
    await user.click(await screen.findByTestId("publish-run"));
    await screen.findByTestId("published");
    expect(callsOf("saveAndPublish")).toEqual([
      [
        "p1",
        [{ schema: "public", table: "events", collection: "public/events", mode: "full", backfill: 0 }],
        [{ schema: "public", table: "events", handling: "insertOnly" }],
      ],
    ]);
    // Unselecting instead takes the question away.
    await user.click(screen.getByTestId("unselect-public.events"));
    await waitFor(() => expect(screen.queryByTestId("hazard-public.events")).toBeNull());
  });

  it("shows what Save and publish will do, in order, and runs nothing until confirmed; Cancel runs nothing", async () => {
    answer("captureDefinition", async () => null);
    answer("planSaveAndPublish", async () =>
      freshPlan(['CREATE PUBLICATION "p" FOR TABLE "public"."orders"'], ['"public"."orders"']),
    );
    answer("saveAndPublish", async () => streaming);
    const started = vi.fn();
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" onStarted={started} />);
    await user.click(await screen.findByTestId("select-public.orders"));
    await user.click(screen.getByTestId("publish"));
    const steps = (await screen.findAllByTestId("publish-plan-step")).map((s) => s.textContent);
    expect(steps).toEqual([
      'Update the publication "p": CREATE PUBLICATION "p" FOR TABLE "public"."orders".',
      "Save the capture definition (1 table).",
      'Create the slot "s" with an exported snapshot.',
      'Backfill "public"."orders" in that snapshot.',
      "Start the capture: it streams every change from the slot.",
    ]);
    expect(screen.getByTestId("publish-plan-statements").textContent).toBe(
      'CREATE PUBLICATION "p" FOR TABLE "public"."orders"',
    );
    expect(screen.getByTestId("publish-run").textContent).toBe("Publish and start");
    expect(callsOf("planSaveAndPublish")).toEqual([
      ["p1", [{ schema: "public", table: "orders", collection: "public/orders", mode: "full", backfill: 0 }], []],
    ]);
    expect(callsOf("saveAndPublish")).toEqual([]);
    await user.click(screen.getByTestId("publish-cancel"));
    expect(screen.queryByTestId("publish-plan")).toBeNull();
    expect(callsOf("saveAndPublish")).toEqual([]);
    expect(started).not.toHaveBeenCalled();

    // Confirmed: the one call runs, then the Capture tab is shown.
    await user.click(screen.getByTestId("publish"));
    await user.click(await screen.findByTestId("publish-run"));
    await waitFor(() => expect(started).toHaveBeenCalledTimes(1));
    expect(callsOf("saveAndPublish")).toEqual([
      ["p1", [{ schema: "public", table: "orders", collection: "public/orders", mode: "full", backfill: 0 }], []],
    ]);
  });

  it("says which step is running, planning or publishing, with its buttons off meanwhile", async () => {
    answer("captureDefinition", async () => null);
    let planned: (plan: PublishPlan) => void = () => {};
    let published: (status: RunStatus) => void = () => {};
    answer("planSaveAndPublish", () => new Promise((resolve) => (planned = resolve)));
    answer("saveAndPublish", () => new Promise((resolve) => (published = resolve)));
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await user.click(await screen.findByTestId("select-public.orders"));
    await user.click(screen.getByTestId("publish"));
    const publish = screen.getByTestId("publish") as HTMLButtonElement;
    expect(publish.textContent).toBe("Planning…");
    expect(publish.disabled).toBe(true);
    planned(freshPlan([], []));
    const run = (await screen.findByTestId("publish-run")) as HTMLButtonElement;
    expect(publish.textContent).toBe("Save and publish (1)");
    expect(publish.disabled).toBe(true);
    expect(run.disabled).toBe(false);
    await user.click(run);
    expect(run.textContent).toBe("Publishing…");
    expect(run.disabled).toBe(true);
    expect((screen.getByTestId("publish-cancel") as HTMLButtonElement).disabled).toBe(true);
    expect(publish.textContent).toBe("Save and publish (1)");
    published(streaming);
    await screen.findByTestId("published");
    expect(screen.queryByTestId("publish-plan")).toBeNull();
    expect(publish.disabled).toBe(false);
  });

  it("shows the engine's error when the confirmed run fails, and does not leave the tab", async () => {
    answer("captureDefinition", async () => null);
    answer("planSaveAndPublish", async () => freshPlan([], []));
    answer("saveAndPublish", async () => {
      throw { kind: "Permission", message: "slot: permission denied to create replication slot \"s\"" };
    });
    const started = vi.fn();
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" onStarted={started} />);
    await user.click(await screen.findByTestId("select-public.orders"));
    await user.click(screen.getByTestId("publish"));
    await user.click(await screen.findByTestId("publish-run"));
    await waitFor(() => expect(screen.getByTestId("publish-error-kind").textContent).toBe("Permission"));
    expect(screen.getByTestId("publish-error-message").textContent).toContain("permission denied to create replication slot");
    expect(started).not.toHaveBeenCalled();
  });

  it("starts from the saved capture and shows a refused name with the engine's message", async () => {
    answer("captureDefinition", async () => ({
      profile: "p1",
      publication: "p",
      slot: "s",
      bindings: [{ schema: "public", table: "events", collection: "audit/events", mode: "full", backfill: 2 }],
    }));
    answer("planSaveAndPublish", async () => {
      throw { kind: "InvalidInput", message: "collection: 'audit events' contains ' '" };
    });
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    const name = (await screen.findByTestId("collection-public.events")) as HTMLInputElement;
    expect(name.value).toBe("audit/events");
    expect((screen.getByTestId("select-public.events") as HTMLInputElement).checked).toBe(true);
    await user.clear(name);
    await user.type(name, "audit events");
    await user.click(screen.getByTestId("publish"));
    await waitFor(() => expect(screen.getByTestId("publish-error-kind").textContent).toBe("InvalidInput"));
    expect(screen.getByTestId("publish-error-message").textContent).toContain("collection: 'audit events'");
    expect(callsOf("saveAndPublish")).toEqual([]);
    expect(callsOf("planSaveAndPublish")[0][1]).toEqual([
      { schema: "public", table: "events", collection: "audit events", mode: "full", backfill: 2 },
    ]);
  });

  it("shows why discovery failed", async () => {
    answer("captureDefinition", async () => null);
    answer("discoverTables", async () => {
      throw { kind: "Authentication", message: "password authentication failed for user \"x\"" };
    });
    render(<TablesPanel profileId="p1" />);
    expect((await screen.findByTestId("discover-error-kind")).textContent).toBe("Authentication");
  });

  it("says as you type why a name is refused, and refuses two tables in one collection", async () => {
    answer("captureDefinition", async () => null);
    answer("checkCollectionName", async (name) => {
      if (String(name).includes(" ")) throw { kind: "InvalidInput", message: `collection: '${name}' contains ' '` };
    });
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await user.click(await screen.findByTestId("select-public.orders"));
    const name = screen.getByTestId("collection-public.orders");
    await user.clear(name);
    await user.type(name, "shop orders");
    expect((await screen.findByTestId("collection-error-public.orders")).textContent).toContain("contains ' '");
    expect((screen.getByTestId("publish") as HTMLButtonElement).disabled).toBe(true);
    await user.clear(name);
    await user.type(name, "public/events");
    await waitFor(() => expect(screen.queryByTestId("collection-error-public.orders")).toBeNull());
    await user.click(screen.getByTestId("select-public.events"));
    expect(screen.getByTestId("collection-error-public.orders").textContent).toContain("another selected table");
    expect((screen.getByTestId("publish") as HTMLButtonElement).disabled).toBe(true);
  });

  it("searches tables and selects every table shown at once", async () => {
    answer("captureDefinition", async () => null);
    answer("discoverTables", async () => [table("orders", ["id"]), table("order_items", ["id"]), table("events", [])]);
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await user.type(await screen.findByTestId("tables-search"), "order");
    expect(screen.getByTestId("tables-count").textContent).toBe("2 of 3 tables · 0 selected");
    expect(screen.queryByTestId("table-public.events")).toBeNull();
    await user.click(screen.getByTestId("select-all"));
    expect(screen.getByTestId("tables-count").textContent).toBe("2 of 3 tables · 2 selected");
    await user.clear(screen.getByTestId("tables-search"));
    expect((screen.getByTestId("select-public.events") as HTMLInputElement).checked).toBe(false);
    expect((screen.getByTestId("select-all") as HTMLInputElement).checked).toBe(false);
  });

  it("opens a table's schema right under its row, in a box that scrolls sideways when narrow", async () => {
    answer("captureDefinition", async () => null);
    const user = userEvent.setup();
    render(<TablesPanel profileId="p1" />);
    await user.click(await screen.findByTestId("schema-public.orders"));
    const row = screen.getByTestId("table-public.orders");
    // The next row of the table is the schema, ahead of the other tables, not below the whole list.
    expect(row.nextElementSibling).toBe(screen.getByTestId("schema-row-public.orders"));
    expect(screen.getByTestId("collection-schema").textContent).toContain('"title": "public/orders"');
    expect(screen.getByTestId("schema-public.orders").getAttribute("aria-expanded")).toBe("true");
    expect(row.closest(".table-wide")).not.toBeNull();
    await user.click(screen.getByTestId("schema-public.orders"));
    expect(screen.queryByTestId("collection-schema")).toBeNull();
  });
});

import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { PreflightCheck } from "../lib/types";
import { SetupPanel } from "./SetupPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { profileView } from "../test/fixtures";

vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["preflight", "runFix"]));

const failing: PreflightCheck = {
  id: "publication",
  title: 'Publication "p" exists with the tables',
  status: "fail",
  explanation: 'Publication "p" does not exist.',
  fix: {
    action: { action: "publication", publication: "p", statements: ['CREATE PUBLICATION "p" FOR TABLE "public"."t"'] },
    preview: ['CREATE PUBLICATION "p" FOR TABLE "public"."t"'],
    warning: null,
  },
};

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
    expect((await screen.findByTestId("check-publication-status")).textContent).toBe("Fail");
    await user.click(screen.getByTestId("fix-publication"));
    expect(screen.getByTestId("fix-publication-sql").textContent).toBe('CREATE PUBLICATION "p" FOR TABLE "public"."t"');
    expect(callsOf("runFix")).toEqual([]);
    await user.click(screen.getByTestId("fix-publication-run"));
    await waitFor(() => expect(screen.getByTestId("check-publication-status").textContent).toBe("Pass"));
    expect(callsOf("runFix")).toEqual([["p1", failing.fix!.action]]);
    expect(screen.queryByTestId("fix-publication")).toBeNull();
  });

  it("shows a failed fix's error by kind", async () => {
    answer("preflight", async () => [failing]);
    answer("runFix", async () => {
      throw { kind: "Permission", message: "must be owner of table t" };
    });
    const user = userEvent.setup();
    render(<SetupPanel profile={profileView()} />);
    await user.click(await screen.findByTestId("fix-publication"));
    await user.click(screen.getByTestId("fix-publication-run"));
    expect((await screen.findByTestId("setup-error-kind")).textContent).toBe("Permission");
  });
});

import { beforeEach, describe, expect, it } from "vitest";

import { answer, callsOf, commands, resetBackend } from "./fakeBackend";
import { runStatus } from "./fixtures";

beforeEach(() => {
  resetBackend();
});

describe("fakeBackend", () => {
  it("answers as told, records each call's arguments, and leaves an unanswered call pending", async () => {
    const fake = commands(["startCapture", "runFix"]);
    answer("startCapture", async (id) => runStatus({ profile: id, state: "starting" }));
    expect((await fake.startCapture("p2")).profile).toBe("p2");
    expect(callsOf("startCapture")).toEqual([["p2"]]);
    const pending = Symbol("pending");
    const settled = await Promise.race([fake.runFix("p1", { action: "grantReplication", role: "app" }), Promise.resolve(pending)]);
    expect(settled).toBe(pending);
    expect(callsOf("runFix")).toEqual([["p1", { action: "grantReplication", role: "app" }]]);
  });

  // What this checks is that `tsc --noEmit` refuses each line; the calls themselves do nothing harmful.
  it("does not compile a fake of the wrong shape or of a command the backend does not have", () => {
    // @ts-expect-error: the backend has no such command.
    commands(["startCaptures"]);
    // @ts-expect-error: the backend has no such command.
    answer("startCaptures", async () => runStatus());
    // @ts-expect-error: a capture's status, not a list of profiles.
    answer("startCapture", async () => []);
    // @ts-expect-error: a state the engine never reports.
    answer("startCapture", async () => ({ ...runStatus(), state: "running" }));
    // @ts-expect-error: the profile id is a string.
    answer("startCapture", async (id: number) => runStatus({ profile: String(id) }));
    // @ts-expect-error: the tail answers with its stop function, not a promise.
    answer("tailCollection", async () => {});
    // @ts-expect-error: `preflight` takes one argument.
    expect(callsOf("preflight")[0]?.[1]).toBeUndefined();
  });
});

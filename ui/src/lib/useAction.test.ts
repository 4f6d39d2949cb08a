import { act, renderHook } from "@testing-library/react";
import { describe, expect, it } from "vitest";

import { toBackendError, useAction } from "./useAction";

describe("useAction", () => {
  it("is busy while the command runs, answers its result and clears an earlier error", async () => {
    const { result } = renderHook(() => useAction());
    let finish!: (value: number) => void;
    let answered: Promise<number | undefined>;
    act(() => {
      answered = result.current.run(() => new Promise<number>((resolve) => (finish = resolve)));
    });
    expect(result.current.busy).toBe(true);
    await act(async () => {
      finish(7);
      expect(await answered).toBe(7);
    });
    expect(result.current.busy).toBe(false);
    expect(result.current.error).toBeNull();
  });

  it("keeps the engine's error, answers undefined, and the next run starts clean", async () => {
    const { result } = renderHook(() => useAction());
    const run = result.current.run;
    await act(async () => {
      expect(
        await result.current.run(() => Promise.reject({ kind: "Permission", message: "table \"t\": denied" })),
      ).toBeUndefined();
    });
    expect(result.current.error).toEqual({ kind: "Permission", message: "table \"t\": denied" });
    expect(result.current.busy).toBe(false);
    expect(result.current.run).toBe(run);
    await act(async () => {
      await result.current.run(async () => "ok");
    });
    expect(result.current.error).toBeNull();
  });

  it("turns anything else thrown into an Internal error with its text", () => {
    expect(toBackendError(new Error("boom"))).toEqual({ kind: "Internal", message: "Error: boom" });
    expect(toBackendError({ kind: "Tls", message: "no TLS" })).toEqual({ kind: "Tls", message: "no TLS" });
  });
});

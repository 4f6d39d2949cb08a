// A fake of `lib/backend` for component tests: each test says how calls answer, and calls are recorded
// with their arguments. A call without an answer never settles, like a backend that is still busy.
// (Plain functions rather than vi.fn: vitest's mockRejectedValue misbehaved with these promises.)
//
// Use: vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["a", "b"]));

const state = {
  calls: [] as { command: string; args: unknown[] }[],
  answers: {} as Record<string, (...args: unknown[]) => Promise<unknown>>,
};

/** The module the mock stands for: one recording function per command name. */
export function commands(names: string[]): Record<string, (...args: unknown[]) => Promise<unknown>> {
  return Object.fromEntries(
    names.map((name) => [
      name,
      (...args: unknown[]) => {
        state.calls.push({ command: name, args });
        const answer = state.answers[name];
        return answer ? answer(...args) : new Promise(() => {});
      },
    ]),
  );
}

/** How `name` answers from now on. */
export const answer = (name: string, fn: (...args: unknown[]) => Promise<unknown>) => {
  state.answers[name] = fn;
};

/** The arguments of every call of `name`, in order. */
export const callsOf = (name: string) => state.calls.filter((c) => c.command === name).map((c) => c.args);

/** Forgets calls and answers (call it before each test). */
export function resetBackend() {
  state.calls = [];
  state.answers = {};
}

// A fake of `lib/backend` for component tests: each test says how calls answer, and calls are recorded
// with their arguments. A call without an answer never settles, like a backend that is still busy.
// (Plain functions rather than vi.fn: vitest's mockRejectedValue misbehaved with these promises.)
// Each answer has the real command's type, so a fake of the wrong shape, or of a command that does
// not exist, does not compile: a test cannot pass against a backend the app never meets.
//
// Use: vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["a", "b"]));

import type * as backend from "../lib/backend";

type Backend = typeof backend;
/** A command of the backend module, by its name there. */
export type Command = keyof Backend;

const state = {
  calls: [] as { command: Command; args: unknown[] }[],
  answers: {} as { [K in Command]?: Backend[K] },
};

/** The module the mock stands for: one recording function per command name. */
export function commands<K extends Command>(names: K[]): Pick<Backend, K> {
  return Object.fromEntries(
    names.map((name) => [
      name,
      (...args: unknown[]) => {
        state.calls.push({ command: name, args });
        const answer = state.answers[name] as ((...args: unknown[]) => unknown) | undefined;
        return answer ? answer(...args) : new Promise(() => {});
      },
    ]),
  ) as Pick<Backend, K>;
}

/** How `name` answers from now on: as the real command would, from the same arguments. */
export const answer = <K extends Command>(name: K, fn: Backend[K]) => {
  state.answers[name] = fn;
};

/** The arguments of every call of `name`, in order. */
export const callsOf = <K extends Command>(name: K) =>
  state.calls.filter((c) => c.command === name).map((c) => c.args as Parameters<Backend[K]>);

/** Forgets calls and answers (call it before each test). */
export function resetBackend() {
  state.calls = [];
  state.answers = {};
}

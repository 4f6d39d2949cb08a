import { useCallback, useState } from "react";

import { isBackendError, type BackendError } from "./types";

/** The engine's `{kind, message}`, or an `Internal` error for anything else thrown (a bug, not input). */
export function toBackendError(thrown: unknown): BackendError {
  return isBackendError(thrown) ? thrown : { kind: "Internal", message: String(thrown) };
}

/**
 * A command the user started, with its busy and error state: `run` clears the last error, is busy
 * until the command settles, and keeps the engine's error if it fails. It answers the command's
 * result, or `undefined` when it failed (the error is then in `error`), so a caller goes on only
 * after a success. `run` keeps its identity across renders.
 */
export function useAction() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<BackendError | null>(null);
  const run = useCallback(async <T>(command: () => Promise<T>): Promise<T | undefined> => {
    setBusy(true);
    setError(null);
    try {
      return await command();
    } catch (e) {
      setError(toBackendError(e));
      return undefined;
    } finally {
      setBusy(false);
    }
  }, []);
  return { busy, error, setError, run };
}

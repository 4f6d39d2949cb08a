import { useEffect, useState } from "react";

import * as backend from "./backend";
import type { BackendError, RunStatus } from "./types";

/**
 * The profile's capture status: read once, then kept current by the engine's pushed statuses. `set`
 * takes a status a command returned; `error` is why the first read failed.
 */
export function useRunStatus(profileId: string): {
  status: RunStatus | null;
  set: (status: RunStatus) => void;
  error: BackendError | null;
} {
  const [status, set] = useState<RunStatus | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  useEffect(() => {
    let live = true;
    let unlisten: (() => void) | null = null;
    backend.captureStatus(profileId).then(
      (s) => live && set(s),
      (e) => live && setError(e as BackendError),
    );
    backend
      .onCaptureStatus((s) => {
        if (live && s.profile === profileId) set(s);
      })
      .then((stop) => (live ? (unlisten = stop) : stop()));
    return () => {
      live = false;
      unlisten?.();
    };
  }, [profileId]);
  return { status, set, error };
}

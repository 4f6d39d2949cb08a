import { useEffect, useState } from "react";

import * as backend from "./backend";
import type { RunStatus } from "./types";

/** The profile's capture status: read once, then kept current by the engine's pushed statuses. */
export function useRunStatus(profileId: string): RunStatus | null {
  const [status, setStatus] = useState<RunStatus | null>(null);
  useEffect(() => {
    let live = true;
    let unlisten: (() => void) | null = null;
    backend.captureStatus(profileId).then(
      (s) => live && setStatus(s),
      () => {},
    );
    backend
      .onCaptureStatus((s) => {
        if (live && s.profile === profileId) setStatus(s);
      })
      .then((stop) => (live ? (unlisten = stop) : stop()));
    return () => {
      live = false;
      unlisten?.();
    };
  }, [profileId]);
  return status;
}

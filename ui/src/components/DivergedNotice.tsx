import * as backend from "../lib/backend";
import type { BackendError, RunStatus } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";

/**
 * A capture refused because its store can no longer follow the source without a gap (the slot was
 * dropped, created again, advanced or invalidated): the engine's account of what happened, and the one
 * way out, "Re-backfill and continue".
 */
export function DivergedNotice({
  profileId,
  error,
  testId,
  onStatus,
}: {
  profileId: string;
  error: BackendError;
  testId: string;
  onStatus?: (status: RunStatus) => void;
}) {
  const { busy, error: failure, run } = useAction();
  async function resync() {
    const status = await run(() => backend.resyncCapture(profileId));
    if (status) onStatus?.(status);
  }
  return (
    <ErrorNotice error={error} testId={testId}>
      <p className="note">
        <strong>Re-backfill and continue</strong> creates the slot again if it is gone, writes the gap into the
        capture's history, reads every backfilled table again in a new snapshot, and then streams on. Tables captured
        with only new changes keep their rows.
      </p>
      <button type="button" data-testid={`${testId}-resync`} disabled={busy} onClick={() => void resync()}>
        {busy ? "Re-backfilling…" : "Re-backfill and continue"}
      </button>
      {failure && <ErrorNotice error={failure} testId={`${testId}-resync-error`} />}
    </ErrorNotice>
  );
}

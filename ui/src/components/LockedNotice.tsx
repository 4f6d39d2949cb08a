import { useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, Removed } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { RemovedNotice } from "./RemovedNotice";

/**
 * An encrypted store that cannot be opened: its key is missing from the keychain or does not open it.
 * The rows on this machine are lost, the source is not; the way out is to discard the local copy (and
 * the profile's slot, which a new consistent backfill needs) and capture again.
 */
export function LockedNotice({ profileId, error, testId }: { profileId: string; error: BackendError; testId: string }) {
  const [confirming, setConfirming] = useState(false);
  const { busy, error: failure, run } = useAction();
  const [removed, setRemoved] = useState<Removed | null>(null);
  async function discard() {
    const gone = await run(() => backend.discardStore(profileId));
    if (gone) {
      setRemoved(gone);
      setConfirming(false);
    }
  }
  if (removed) {
    return (
      <RemovedNotice removed={removed} testId={`${testId}-discarded`}>
        <p className="note">Publish the capture again on the Tables tab, then start it: it backfills into a new encrypted store.</p>
      </RemovedNotice>
    );
  }
  return (
    <ErrorNotice error={error} testId={testId}>
      <p className="note">
        The captured rows on this machine cannot be read without their key. Your database is untouched:{" "}
        <strong>Discard the local copy</strong> deletes the store on this machine and drops the profile's replication slot,
        so the next capture reads every table again into a new store with a new key.
      </p>
      {confirming ? (
        <div className="actions">
          <button type="button" className="danger" data-testid={`${testId}-discard-confirm`} disabled={busy} onClick={() => void discard()}>
            {busy ? "Discarding…" : "Delete the local copy and drop the slot"}
          </button>
          <button type="button" className="secondary" disabled={busy} onClick={() => setConfirming(false)}>
            Cancel
          </button>
        </div>
      ) : (
        <button type="button" data-testid={`${testId}-discard`} onClick={() => setConfirming(true)}>
          Discard the local copy
        </button>
      )}
      {failure && <ErrorNotice error={failure} testId={`${testId}-discard-error`} />}
    </ErrorNotice>
  );
}

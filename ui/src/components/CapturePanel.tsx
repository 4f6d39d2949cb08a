import { useEffect, useState } from "react";

import * as backend from "../lib/backend";
import { useRunStatus } from "../lib/runStatus";
import type { BackfillProgress, RunStatus } from "../lib/types";
import { useAction } from "../lib/useAction";
import { DivergedNotice } from "./DivergedNotice";
import { ErrorNotice } from "./ErrorNotice";
import { HandOffPanel } from "./HandOffPanel";
import { LockedNotice } from "./LockedNotice";

const STATE: Record<RunStatus["state"], string> = {
  stopped: "Stopped",
  starting: "Starting",
  streaming: "Streaming",
  failed: "Failed",
};

/** How often the lag in bytes is read from the server while streaming. */
const LAG_BYTES_EVERY_MS = 5000;

/** PostgreSQL counts time from 2000-01-01 (the engine passes commit times through as the server sent them). */
const POSTGRES_EPOCH_MS = 946_684_800_000;

const percent = (p: BackfillProgress): number =>
  p.done ? 100 : p.estimatedRows && p.estimatedRows > 0 ? Math.min(99, Math.floor((p.rows / p.estimatedRows) * 100)) : 0;

/**
 * The profile's capture: start and stop it, each table's backfill progress (rows, rate, time left), and
 * the stream's state (changes, throughput, lag, checkpoint). Status is pushed by the engine.
 */
export function CapturePanel({ profileId }: { profileId: string }) {
  const { status, set: setStatus, error: readError } = useRunStatus(profileId);
  const { busy, error: actionError, run } = useAction();
  const error = actionError ?? readError;
  const [confirmDrop, setConfirmDrop] = useState(false);

  async function act(action: () => Promise<RunStatus>) {
    const status = await run(action);
    if (status) setStatus(status);
  }

  const running = status?.state === "starting" || status?.state === "streaming";
  const streaming = status?.state === "streaming";

  // Lag in bytes is the server's view (WAL written but not yet confirmed): read it while streaming.
  const [lagBytes, setLagBytes] = useState<number | null>(null);
  useEffect(() => {
    if (!streaming) return;
    let live = true;
    const read = () =>
      backend.slotHealth(profileId).then(
        (h) => live && setLagBytes(h.unconfirmedBytes),
        () => live && setLagBytes(null),
      );
    void read();
    const timer = setInterval(() => void read(), LAG_BYTES_EVERY_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [profileId, streaming]);
  const backfills = Object.values(status?.backfills ?? {});
  return (
    <section className="panel" data-testid="capture-panel">
      <h2>Capture</h2>
      <p>
        State:{" "}
        <span className="badge" data-testid="capture-state" data-state={status?.state ?? "loading"}>
          {status ? STATE[status.state] : "…"}
        </span>
      </p>
      <div className="row">
        <button
          type="button"
          data-testid="capture-start"
          disabled={busy || running}
          onClick={() => void act(() => backend.startCapture(profileId))}
        >
          Start capture
        </button>
        <button
          type="button"
          className="secondary"
          data-testid="capture-stop"
          disabled={busy || !running}
          onClick={() => void act(() => backend.stopCapture(profileId))}
        >
          Pause (keep the slot)
        </button>
        <button type="button" className="danger" data-testid="capture-drop" disabled={busy} onClick={() => setConfirmDrop(true)}>
          Stop and drop the slot…
        </button>
      </div>
      <p className="note">
        <strong>Pause</strong> keeps the replication slot, so nothing is missed when you start again; meanwhile the
        server keeps WAL for the slot, which grows with every write (on Neon an inactive slot is removed after about 40
        hours). <strong>Stop and drop the slot</strong> frees that WAL at once; the collections here are emptied and the
        next start backfills them again from a new snapshot.
      </p>
      {confirmDrop && (
        <div className="confirm" role="alertdialog" aria-label="Drop the slot" data-testid="capture-drop-confirm">
          <p>
            Drop the slot? Changes it still holds are lost, the local collections are emptied (the table selection stays),
            and the next start backfills every table again.
          </p>
          <div className="row">
            <button
              type="button"
              className="danger"
              data-testid="capture-drop-run"
              onClick={() => {
                setConfirmDrop(false);
                void act(() => backend.stopAndDropSlot(profileId));
              }}
            >
              Drop the slot
            </button>
            <button type="button" className="secondary" data-testid="capture-drop-cancel" onClick={() => setConfirmDrop(false)}>
              Cancel
            </button>
          </div>
        </div>
      )}
      {error &&
        (error.kind === "Locked" ? (
          <LockedNotice profileId={profileId} error={error} testId="capture-error" />
        ) : (
          <ErrorNotice error={error} testId="capture-error" />
        ))}
      {status?.error &&
        (status.error.kind === "Diverged" ? (
          <DivergedNotice profileId={profileId} error={status.error} testId="capture-failure" onStatus={setStatus} />
        ) : status.error.kind === "Locked" ? (
          <LockedNotice profileId={profileId} error={status.error} testId="capture-failure" />
        ) : (
          <ErrorNotice error={status.error} testId="capture-failure" />
        ))}
      {backfills.length > 0 && (
        <>
          <h3>Backfill</h3>
          <div className="table-wide">
            <table className="tables">
              <thead>
                <tr>
                  <th>Collection</th>
                  <th>Progress</th>
                  <th>Rows</th>
                  <th>Rate</th>
                  <th>Time left</th>
                </tr>
              </thead>
              <tbody>
                {backfills.map((p) => (
                  <tr key={p.collection} data-testid={`backfill-${p.collection}`}>
                    <td>{p.collection}</td>
                    <td>
                      <progress max={100} value={percent(p)} />{" "}
                      <span data-testid={`backfill-${p.collection}-percent`}>{percent(p)}%</span>
                    </td>
                    <td>
                      {p.rows.toLocaleString()}
                      {p.estimatedRows ? ` / ~${p.estimatedRows.toLocaleString()}` : ""}
                    </td>
                    <td>{Math.round(p.rowsPerSecond).toLocaleString()} rows/s</td>
                    <td>{p.done ? "done" : p.secondsLeft !== null ? `${Math.ceil(p.secondsLeft)} s` : "—"}</td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
      {status && status.state !== "stopped" && (
        <dl className="facts" data-testid="stream-facts">
          <dt>Changes stored</dt>
          <dd data-testid="stream-changes">{status.changes.toLocaleString()}</dd>
          <dt>Throughput</dt>
          <dd>{Math.round(status.changesPerSecond).toLocaleString()} changes/s</dd>
          <dt>Last source commit</dt>
          <dd data-testid="stream-last-commit">
            {status.lastCommitMicros === null ? "—" : new Date(POSTGRES_EPOCH_MS + status.lastCommitMicros / 1000).toLocaleTimeString()}
          </dd>
          <dt>Lag (WAL not yet confirmed)</dt>
          <dd data-testid="stream-lag-bytes">{lagBytes === null ? "—" : `${(lagBytes / 1024).toFixed(1)} KiB`}</dd>
          <dt>Lag (commit → stored)</dt>
          <dd data-testid="stream-lag">{status.lagMs === null ? "—" : `${status.lagMs.toFixed(1)} ms`}</dd>
          <dt>Checkpoint</dt>
          <dd>
            <code>{status.checkpoint || "—"}</code>
          </dd>
        </dl>
      )}
      <HandOffPanel profileId={profileId} />
    </section>
  );
}

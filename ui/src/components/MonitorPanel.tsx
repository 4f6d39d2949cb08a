import { useEffect, useState, useSyncExternalStore } from "react";

import * as backend from "../lib/backend";
import { historyOf, subscribe } from "../lib/history";
import { useRunStatus } from "../lib/runStatus";
import type { BackendError, SlotHealth } from "../lib/types";
import { Chart } from "./Chart";
import { DivergedNotice } from "./DivergedNotice";
import { ErrorNotice } from "./ErrorNotice";

/** How often the slot's health is read from the server. */
const HEALTH_EVERY_MS = 5000;

const mib = (bytes: number | null) => (bytes === null ? "—" : `${(bytes / 1048576).toFixed(1)} MiB`);

function duration(secs: number): string {
  const abs = Math.abs(secs);
  const h = Math.floor(abs / 3600);
  const m = Math.floor((abs % 3600) / 60);
  return `${h} h ${m} min`;
}

/**
 * Watch: throughput and lag over time (from the engine's pushed statuses), and the health of the
 * capture's slot read from the server: what it holds back, `wal_status`, `safe_wal_size`, and on Neon
 * the time left before an inactive slot is removed.
 */
export function MonitorPanel({ profileId }: { profileId: string }) {
  const samples = useSyncExternalStore(subscribe, () => historyOf(profileId));
  const { status: run } = useRunStatus(profileId);
  const [health, setHealth] = useState<SlotHealth | null>(null);
  const [error, setError] = useState<BackendError | null>(null);

  useEffect(() => {
    let live = true;
    const read = () =>
      backend.slotHealth(profileId).then(
        (h) => {
          if (!live) return;
          setHealth(h);
          setError(null);
        },
        (e) => live && setError(e as BackendError),
      );
    void read();
    const timer = setInterval(() => void read(), HEALTH_EVERY_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, [profileId]);

  const x = samples.map((s) => s.at);
  return (
    <section className="panel" data-testid="monitor-panel">
      <h2>Monitor</h2>
      {run?.error?.kind === "Diverged" && <DivergedNotice profileId={profileId} error={run.error} testId="monitor-diverged" />}
      <h3>Slot health</h3>
      {error && <ErrorNotice error={error} testId="health-error" />}
      {!health && !error && <p className="muted">Reading the slot…</p>}
      {health && (
        <>
          <ul className="warnings" data-testid="health-warnings">
            {health.warnings.map((w) => (
              <li key={w.id} className={`health ${w.level}`} data-testid={`health-warning-${w.id}`} data-level={w.level}>
                {w.message}
              </li>
            ))}
            {health.warnings.length === 0 && (
              <li className="health ok" data-testid="health-ok">
                {health.exists
                  ? "The slot is healthy: nothing to do."
                  : "No slot yet: it is created when the capture starts."}
              </li>
            )}
          </ul>
          <dl className="facts" data-testid="health-facts">
            <dt>Slot</dt>
            <dd>
              <code>{health.slot}</code> {health.exists ? (health.active ? "active" : "inactive") : "does not exist"}
            </dd>
            <dt>wal_status</dt>
            <dd data-testid="health-wal-status">{health.walStatus ?? "—"}</dd>
            <dt>WAL retained for the slot</dt>
            <dd data-testid="health-retained">{mib(health.retainedBytes)}</dd>
            <dt>Not yet confirmed</dt>
            <dd data-testid="health-unconfirmed">{mib(health.unconfirmedBytes)}</dd>
            <dt>safe_wal_size</dt>
            <dd>
              {health.maxSlotWalKeepBytes === null
                ? "unlimited (max_slot_wal_keep_size = -1: WAL grows until the disk fills)"
                : `${mib(health.safeWalSize)} of ${mib(health.maxSlotWalKeepBytes)}`}
            </dd>
            {health.neon && (
              <>
                <dt>Neon removes it in</dt>
                <dd data-testid="health-neon-countdown">
                  {health.neonRemovalInSecs === null
                    ? health.active
                      ? "never while the capture streams"
                      : "—"
                    : health.neonRemovalInSecs > 0
                      ? `about ${duration(health.neonRemovalInSecs)}`
                      : `overdue by ${duration(health.neonRemovalInSecs)}`}
                </dd>
              </>
            )}
          </dl>
          {health.neon && (
            <p className="note" data-testid="health-neon-reads">
              Reading the slot's health connects to the database every few seconds while this tab is open; on Neon that
              keeps the compute awake too. Leave the tab to let it scale to zero.
            </p>
          )}
        </>
      )}
      <h3>Throughput and lag</h3>
      {samples.length === 0 ? (
        <p className="muted" data-testid="monitor-empty">
          The charts fill in while the capture streams (a point a second, the last ten minutes).
        </p>
      ) : (
        <>
          <Chart title="Throughput" unit="changes/s" x={x} y={samples.map((s) => s.changesPerSecond)} testId="chart-throughput" />
          <Chart title="Lag (commit → stored)" unit="ms" x={x} y={samples.map((s) => s.lagMs)} testId="chart-lag" />
        </>
      )}
    </section>
  );
}

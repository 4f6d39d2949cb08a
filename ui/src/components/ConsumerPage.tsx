import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import * as backend from "../lib/backend";
import { useAction } from "../lib/useAction";
import type {
  BackendError,
  ConsumerActivity,
  ConsumerSpec,
  ConsumerView,
  DeliveryAttempt,
  DeliverySample,
  TestMessageResult,
} from "../lib/types";
import { Chart } from "./Chart";
import { ErrorNotice } from "./ErrorNotice";

/** How often the page reads the consumer and its activity again. */
const REFRESH_EVERY_MS = 2000;

/** Seconds the charts span (the engine returns samples of its last 300). */
export const CHART_SECONDS = 300;

/**
 * One point per second over the last `seconds` up to `nowMs`: delivered per second (0 when nothing
 * was delivered) and mean commit → delivered latency (a gap when nothing was).
 */
export function chartSeries(samples: DeliverySample[], nowMs: number, seconds = CHART_SECONDS) {
  const end = Math.floor(nowMs / 1000);
  const bySecond = new Map(samples.map((s) => [s.second, s]));
  const x: number[] = [];
  const delivered: number[] = [];
  const latency: (number | null)[] = [];
  for (let t = end - seconds + 1; t <= end; t++) {
    const s = bySecond.get(t);
    x.push(t);
    delivered.push(s ? s.delivered : 0);
    latency.push(s ? Math.round(s.latencyAvgMs) : null);
  }
  return { x, delivered, latency };
}

/**
 * An attempt's outcome in a few words: "HTTP 204", "HTTP 500", "no answer", or "acknowledged" (a NATS
 * publish, which has no HTTP status).
 */
export function attemptStatus(a: DeliveryAttempt): string {
  if (a.status !== null) return `HTTP ${a.status}`;
  return a.error ? "no answer" : "acknowledged";
}

const time = (ms: number) => new Date(ms).toLocaleTimeString();

/**
 * A consumer's page: how it delivers over time (the Monitor tab's charts), its recent requests with
 * status and duration, failing messages with their last error and the request that failed (Retry,
 * Skip), Send a test message, Pause/Resume, Edit, Delete with a confirmation, and the signing secret on
 * demand with how to verify it.
 */
export function ConsumerPage({
  profileId,
  name,
  onBack,
}: {
  profileId: string;
  name: string;
  onBack: () => void;
}) {
  const [consumer, setConsumer] = useState<ConsumerView | null | undefined>(undefined);
  const [activity, setActivity] = useState<ConsumerActivity | null>(null);
  const [loadError, setLoadError] = useState<BackendError | null>(null);
  const { busy, error, run } = useAction();
  const [done, setDone] = useState<string | null>(null);
  const [test, setTest] = useState<TestMessageResult | null>(null);
  const [secret, setSecret] = useState<string | null>(null);
  const [editing, setEditing] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const heading = useRef<HTMLHeadingElement>(null);

  const reload = useCallback(async () => {
    try {
      const [list, act] = await Promise.all([
        backend.listConsumers(profileId),
        backend.consumerActivity(profileId, name).catch((e: BackendError) => {
          if (e.kind === "NotFound") return null;
          throw e;
        }),
      ]);
      setConsumer(list.find((c) => c.name === name) ?? null);
      setActivity(act);
      setLoadError(null);
    } catch (e) {
      setLoadError(e as BackendError);
    }
  }, [profileId, name]);

  useEffect(() => {
    void reload();
    const timer = setInterval(() => void reload(), REFRESH_EVERY_MS);
    return () => clearInterval(timer);
  }, [reload]);

  // Keyboard users land on the page's title once it is there (not on the loading line).
  const shown = consumer !== undefined && consumer !== null;
  useEffect(() => {
    if (shown) heading.current?.focus();
  }, [shown]);

  async function act(what: () => Promise<string | void>) {
    setDone(null);
    const answered = await run(async () => ({ said: await what() }));
    if (!answered) return;
    if (answered.said) setDone(answered.said);
    await reload();
  }

  const series = useMemo(
    () => chartSeries(activity?.samples ?? [], activity?.nowMs ?? Date.now()),
    [activity],
  );

  const back = (
    <button type="button" className="secondary" data-testid="consumer-page-back" onClick={onBack}>
      ← All consumers
    </button>
  );

  if (consumer === undefined) {
    return (
      <section className="panel" data-testid="consumer-page">
        {back}
        {loadError ? (
          <ErrorNotice error={loadError} testId="consumer-page-error" />
        ) : (
          <p className="muted" data-testid="consumer-page-loading">
            Reading {name}…
          </p>
        )}
      </section>
    );
  }
  if (consumer === null) {
    return (
      <section className="panel" data-testid="consumer-page">
        {back}
        <p className="muted" data-testid="consumer-page-gone">
          There is no consumer named {name} any more.
        </p>
      </section>
    );
  }

  const c = consumer;
  const d = c.destination;
  const attempts = activity?.attempts ?? [];
  return (
    <section className="panel consumer-page" data-testid="consumer-page" aria-labelledby="consumer-page-title">
      <div className="card-head">
        {back}
        <h2 id="consumer-page-title" ref={heading} tabIndex={-1} data-testid="consumer-page-name">
          {c.name}
        </h2>
        <span className={`badge ${c.paused ? "warn" : ""}`} data-testid="consumer-page-state">
          {c.paused ? "Paused" : "Delivering"}
        </span>
      </div>
      {loadError && <ErrorNotice error={loadError} testId="consumer-page-error" />}
      <dl className="facts">
        <dt>Collections</dt>
        <dd>{c.collections.join(", ")}</dd>
        <dt>{d.type === "webhook" ? "Push to" : d.type === "nats" ? "Publish to" : "Pull"}</dt>
        <dd data-testid="consumer-page-destination">
          <code>{d.type === "webhook" ? d.url : d.type === "nats" ? `${d.url} ${d.subject}` : "through the pull API"}</code>
        </dd>
        <dt>Mode</dt>
        <dd>{c.mode}</dd>
        {c.filter && (
          <>
            <dt>Filter</dt>
            <dd>
              <code data-testid="consumer-page-filter">{c.filter}</code>
            </dd>
          </>
        )}
        <dt>Delivered (last 5 min)</dt>
        <dd data-testid="consumer-page-delivered">
          {activity ? activity.samples.reduce((n, s) => n + s.delivered, 0) : "…"}
        </dd>
        <dt>Pending</dt>
        <dd data-testid="consumer-page-pending">{c.pending}</dd>
        <dt>Failing</dt>
        <dd data-testid="consumer-page-failed">{c.failed}</dd>
      </dl>
      {c.paused && (
        <p className="health warn" role="status" data-testid="consumer-page-paused">
          Paused: nothing is delivered and new changes wait in its queue. The replication slot is not held.
        </p>
      )}

      <div className="actions" role="toolbar" aria-label={`Actions on ${c.name}`}>
        <button
          type="button"
          data-testid="consumer-page-pause"
          disabled={busy}
          onClick={() =>
            void act(async () => {
              await backend.setConsumerPaused(profileId, c.name, !c.paused);
              return c.paused ? "Resumed" : "Paused";
            })
          }
        >
          {c.paused ? "Resume" : "Pause"}
        </button>
        {d.type === "webhook" && (
          <button
            type="button"
            className="secondary"
            data-testid="consumer-page-test"
            disabled={busy}
            onClick={() =>
              void act(async () => {
                setTest(null);
                setTest(await backend.testConsumer(profileId, c.name));
              })
            }
          >
            Send a test message
          </button>
        )}
        <button
          type="button"
          className="secondary"
          data-testid="consumer-page-edit"
          disabled={busy || editing}
          onClick={() => setEditing(true)}
        >
          Edit
        </button>
        {confirming ? (
          <span className="confirm" role="group" aria-label={`Delete ${c.name}?`}>
            Delete {c.name}, its queue and its keychain entries?
            <button
              type="button"
              data-testid="consumer-page-delete-confirm"
              disabled={busy}
              onClick={() =>
                void act(async () => {
                  await backend.removeConsumer(profileId, c.name);
                  onBack();
                })
              }
            >
              Delete
            </button>
            <button
              type="button"
              className="secondary"
              data-testid="consumer-page-delete-cancel"
              onClick={() => setConfirming(false)}
            >
              Cancel
            </button>
          </span>
        ) : (
          <button type="button" className="secondary" data-testid="consumer-page-delete" onClick={() => setConfirming(true)}>
            Delete
          </button>
        )}
      </div>
      {done && (
        <p className="muted" role="status" data-testid="consumer-page-done">
          {done}
        </p>
      )}
      {error && <ErrorNotice error={error} testId="consumer-page-action-error" />}
      {test && (
        <div
          className={`health ${test.error ? "warn" : "ok"}`}
          role="status"
          data-testid="consumer-page-test-result"
          data-ok={test.error ? "false" : "true"}
        >
          Test message {test.webhookId}: {attemptStatus(test)} in {test.durationMs} ms
          {test.error && <div data-testid="consumer-page-test-error">{test.error}</div>}
        </div>
      )}
      {editing && (
        <ConsumerEdit
          consumer={c}
          onCancel={() => setEditing(false)}
          onSave={(spec) =>
            act(async () => {
              await backend.editConsumer(profileId, c.name, spec);
              setEditing(false);
              return "Saved: delivery uses the new settings within a second";
            })
          }
          busy={busy}
        />
      )}

      <h3>Delivery over time</h3>
      {activity === null ? (
        <p className="muted" data-testid="consumer-page-activity-loading">
          Reading its deliveries…
        </p>
      ) : (
        <div className="charts" data-testid="consumer-page-charts">
          <Chart title="Delivered" unit="messages/s" x={series.x} y={series.delivered} testId="consumer-chart-throughput" />
          <Chart
            title="Latency (commit → delivered)"
            unit="ms"
            x={series.x}
            y={series.latency}
            testId="consumer-chart-latency"
          />
        </div>
      )}

      <h3>Recent deliveries</h3>
      {activity !== null && attempts.length === 0 && (
        <p className="muted" data-testid="consumer-page-attempts-empty">
          {d.type === "pull"
            ? "Your application pulls this consumer's messages: its requests are not listed here; what it acknowledges is counted above."
            : "No requests yet. They appear here as changes are delivered."}
        </p>
      )}
      {attempts.length > 0 && (
        <table className="tables attempts" data-testid="consumer-page-attempts">
          <thead>
            <tr>
              <th scope="col">Time</th>
              <th scope="col">Messages</th>
              <th scope="col">Status</th>
              <th scope="col">Duration</th>
              <th scope="col">Error</th>
            </tr>
          </thead>
          <tbody>
            {attempts.map((a, i) => (
              <tr
                key={`${a.atMs}-${i}`}
                data-testid={`consumer-attempt-${i}`}
                data-status={a.status ?? ""}
                data-ok={a.error ? "false" : "true"}
                className={a.error ? "failed" : undefined}
              >
                <td>{time(a.atMs)}</td>
                <td>{a.test ? "test" : a.messages}</td>
                <td>{attemptStatus(a)}</td>
                <td>{a.durationMs} ms</td>
                <td>{a.error ?? ""}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}

      <h3>Failing messages</h3>
      {c.parked.length === 0 ? (
        <p className="muted" data-testid="consumer-page-parked-empty">
          None: a message that fails is retried (1 s, doubling, up to 10 min)
          {d.type !== "pull" && (d.maxRetries === null ? " forever" : `, then parked here after ${d.maxRetries} retries`)}.
        </p>
      ) : (
        <div data-testid="consumer-page-parked">
          {c.failed > c.parked.length && (
            <p className="muted">The oldest {c.parked.length} of {c.failed}; Retry all and Skip all act on every one.</p>
          )}
          <ul>
            {c.parked.map((p) => (
              <li key={p.seq} data-testid={`consumer-parked-${p.seq}`}>
                <div>
                  Change {p.seq}, {p.attempts} attempts: <span data-testid={`consumer-parked-${p.seq}-error`}>{p.lastError ?? "no error recorded"}</span>
                </div>
                <details>
                  <summary>The request that failed</summary>
                  <pre data-testid={`consumer-parked-${p.seq}-request`}>
                    {d.type === "webhook" ? `POST ${d.url}\n` : ""}
                    {JSON.stringify(d.type === "webhook" && d.batchSize !== null ? { data: [p.message] } : p.message, null, 2)}
                  </pre>
                </details>
                <div className="actions">
                  <button
                    type="button"
                    data-testid={`consumer-parked-${p.seq}-retry`}
                    disabled={busy}
                    onClick={() => void act(async () => `${await backend.retryConsumer(profileId, c.name, p.seq)} queued again`)}
                  >
                    Retry
                  </button>
                  <button
                    type="button"
                    className="secondary"
                    data-testid={`consumer-parked-${p.seq}-skip`}
                    disabled={busy}
                    onClick={() => void act(async () => `${await backend.skipConsumer(profileId, c.name, p.seq)} skipped`)}
                  >
                    Skip
                  </button>
                </div>
              </li>
            ))}
          </ul>
          <div className="actions">
            <button
              type="button"
              data-testid="consumer-page-retry-all"
              disabled={busy}
              onClick={() => void act(async () => `${await backend.retryConsumer(profileId, c.name)} queued again`)}
            >
              Retry all
            </button>
            <button
              type="button"
              className="secondary"
              data-testid="consumer-page-skip-all"
              disabled={busy}
              onClick={() => void act(async () => `${await backend.skipConsumer(profileId, c.name)} skipped`)}
            >
              Skip all
            </button>
          </div>
        </div>
      )}

      {d.type === "webhook" && (
        <>
          <h3>Signing secret</h3>
          <div className="row">
            {secret === null ? (
              <button
                type="button"
                className="secondary"
                data-testid="consumer-page-reveal"
                disabled={busy}
                onClick={() =>
                  void act(async () => {
                    setSecret(await backend.revealSigningSecret(profileId, c.name));
                  })
                }
              >
                Reveal signing secret
              </button>
            ) : (
              <>
                <code data-testid="consumer-page-secret">{secret}</code>
                <button type="button" className="secondary" data-testid="consumer-page-hide" onClick={() => setSecret(null)}>
                  Hide
                </button>
              </>
            )}
          </div>
          <p className="hint" data-testid="consumer-page-verify">
            To verify a request: base64 HMAC-SHA256, keyed with this secret's base64 part after <code>whsec_</code>, of{" "}
            <code>webhook-id.webhook-timestamp.body</code> must equal the <code>webhook-signature</code> after{" "}
            <code>v1,</code> (any Standard Webhooks library does it).
          </p>
        </>
      )}
    </section>
  );
}

/** Parses "K=V" lines into headers; returns the first bad line instead. */
export function parseHeaders(text: string): Record<string, string> | { bad: string } {
  const out: Record<string, string> = {};
  for (const line of text.split("\n").map((l) => l.trim()).filter(Boolean)) {
    const at = line.indexOf("=");
    if (at <= 0) return { bad: line };
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

const positive = (text: string) => /^\d+$/.test(text.trim()) && Number(text) > 0;

/**
 * Edit: a webhook's URL, headers, timeout, batch size and retries; a pull consumer's visibility timeout;
 * a NATS consumer's timeout and retries; and the filter. Secret header values stay in the keychain.
 */
function ConsumerEdit({
  consumer: c,
  onCancel,
  onSave,
  busy,
}: {
  consumer: ConsumerView;
  onCancel: () => void;
  onSave: (spec: ConsumerSpec) => Promise<void>;
  busy: boolean;
}) {
  const d = c.destination;
  const [filter, setFilter] = useState(c.filter ?? "");
  const [url, setUrl] = useState(d.type === "webhook" ? d.url : "");
  const [headers, setHeaders] = useState(
    d.type === "webhook"
      ? Object.entries(d.headers)
          .map(([k, v]) => `${k}=${v}`)
          .join("\n")
      : "",
  );
  const [timeout, setTimeoutMs] = useState(
    String(d.type === "pull" ? d.visibilityTimeoutMs : d.timeoutMs),
  );
  const [batch, setBatch] = useState(d.type === "webhook" ? String(d.batchSize ?? "") : d.type === "nats" ? String(d.batchSize) : "");
  const [retries, setRetries] = useState(d.type !== "pull" && d.maxRetries !== null ? String(d.maxRetries) : "");
  const [problem, setProblem] = useState<string | null>(null);

  function save() {
    setProblem(null);
    if (!positive(timeout)) return setProblem("The timeout must be a whole number of milliseconds above 0.");
    if (retries.trim() !== "" && !/^\d+$/.test(retries.trim())) return setProblem("Retries must be a whole number, or empty to retry forever.");
    if (batch.trim() !== "" && !positive(batch)) return setProblem("The batch size must be a whole number above 0.");
    let destination = d;
    if (d.type === "webhook") {
      const parsed = parseHeaders(headers);
      if ("bad" in parsed && typeof parsed.bad === "string") return setProblem(`"${parsed.bad}" is not a header: write K=V.`);
      destination = {
        ...d,
        url: url.trim(),
        headers: parsed as Record<string, string>,
        timeoutMs: Number(timeout),
        batchSize: batch.trim() === "" ? null : Number(batch),
        maxRetries: retries.trim() === "" ? null : Number(retries),
      };
    } else if (d.type === "nats") {
      destination = {
        ...d,
        timeoutMs: Number(timeout),
        batchSize: batch.trim() === "" ? d.batchSize : Number(batch),
        maxRetries: retries.trim() === "" ? null : Number(retries),
      };
    } else {
      destination = { ...d, visibilityTimeoutMs: Number(timeout) };
    }
    const { id: _id, position: _p, pending: _pe, failed: _f, notices: _n, paused: _pa, parked: _pk, ...rest } = c;
    void onSave({ ...rest, filter: filter.trim() === "" ? null : filter.trim(), destination });
  }

  return (
    <form
      className="card"
      data-testid="consumer-edit"
      onSubmit={(e) => {
        e.preventDefault();
        save();
      }}
      onKeyDown={(e) => {
        if (e.key === "Escape") onCancel();
      }}
    >
      <h3>Edit {c.name}</h3>
      {d.type === "webhook" && (
        <>
          <label>
            Endpoint URL
            <input data-testid="consumer-edit-url" value={url} onChange={(e) => setUrl(e.target.value)} autoFocus />
          </label>
          <label>
            Headers (one K=V per line)
            <textarea data-testid="consumer-edit-headers" value={headers} onChange={(e) => setHeaders(e.target.value)} rows={3} />
          </label>
          {d.secretHeaders.length > 0 && (
            <p className="hint" data-testid="consumer-edit-secret-headers">
              Secret headers {d.secretHeaders.join(", ")}: their values stay in the keychain.
            </p>
          )}
        </>
      )}
      <label>
        {d.type === "pull" ? "Visibility timeout (ms)" : d.type === "nats" ? "Acknowledgement timeout (ms)" : "Timeout (ms)"}
        <input data-testid="consumer-edit-timeout" inputMode="numeric" value={timeout} onChange={(e) => setTimeoutMs(e.target.value)} />
      </label>
      {d.type !== "pull" && (
        <>
          <label>
            {d.type === "webhook" ? "Batch size (empty: one bare message per request)" : "Publish batch"}
            <input data-testid="consumer-edit-batch" inputMode="numeric" value={batch} onChange={(e) => setBatch(e.target.value)} />
          </label>
          <label>
            Retries before a message is parked (empty: forever)
            <input data-testid="consumer-edit-retries" inputMode="numeric" value={retries} onChange={(e) => setRetries(e.target.value)} />
          </label>
        </>
      )}
      <label>
        Filter (CEL; empty delivers every change)
        <input data-testid="consumer-edit-filter" value={filter} onChange={(e) => setFilter(e.target.value)} />
      </label>
      <p className="hint">The new filter applies to changes read from now on; queued messages stay as they are.</p>
      {problem && (
        <p className="health warn" role="alert" data-testid="consumer-edit-problem">
          {problem}
        </p>
      )}
      <div className="actions">
        <button type="submit" data-testid="consumer-edit-save" disabled={busy}>
          Save
        </button>
        <button type="button" className="secondary" data-testid="consumer-edit-cancel" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

import { useEffect, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, TrialRequest } from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";

/** How often what arrived is read again. */
const REFRESH_EVERY_MS = 1500;

/**
 * "Try a webhook": what the app's own receiver got from the `try-webhook` consumer, newest first, each
 * with its signature checked as a receiver would, so the flow can be seen working with nothing else
 * running.
 */
export function TrialWebhook({ url, onClose }: { url: string; onClose: () => void }) {
  const [requests, setRequests] = useState<TrialRequest[] | null>(null);
  const [error, setError] = useState<BackendError | null>(null);

  useEffect(() => {
    let live = true;
    const read = async () => {
      try {
        const got = await backend.trialWebhookRequests();
        if (live) {
          setRequests(got);
          setError(null);
        }
      } catch (e) {
        if (live) setError(e as BackendError);
      }
    };
    void read();
    const timer = setInterval(() => void read(), REFRESH_EVERY_MS);
    return () => {
      live = false;
      clearInterval(timer);
    };
  }, []);

  return (
    <section className="card" data-testid="trial-webhook" aria-label="What the trial webhook receives">
      <div className="card-head">
        <h3>Try a webhook</h3>
        <button type="button" className="secondary" data-testid="trial-webhook-close" onClick={onClose}>
          Close
        </button>
      </div>
      <p className="muted">
        Consumer <code>try-webhook</code> sends every change of every collection to Tidepool's own receiver at{" "}
        <code data-testid="trial-webhook-url">{url}</code>. Change a row in the database to see it arrive; open the
        consumer for its deliveries, or delete it when done.
      </p>
      {error && <ErrorNotice error={error} testId="trial-webhook-error" />}
      {requests === null && !error && (
        <p className="muted" data-testid="trial-webhook-loading">
          Reading what arrived…
        </p>
      )}
      {requests?.length === 0 && (
        <p className="muted" data-testid="trial-webhook-empty">
          Nothing has arrived yet: a change arrives as soon as it is captured.
        </p>
      )}
      {requests && requests.length > 0 && (
        <ul className="trial-requests" data-testid="trial-webhook-requests">
          {requests.map((r, i) => (
            <li key={`${r.atMs}-${r.webhookId}-${i}`} data-testid={`trial-request-${i}`}>
              <div>
                {new Date(r.atMs).toLocaleTimeString()} · {r.messages} message{r.messages === 1 ? "" : "s"}:{" "}
                <span data-testid={`trial-request-${i}-summary`}>{r.summary.join(", ")}</span>{" "}
                <span
                  className={`badge ${r.verified ? "" : "warn"}`}
                  data-testid={`trial-request-${i}-verified`}
                  data-verified={r.verified ? "true" : "false"}
                >
                  {r.verified ? "signature verified" : "signature does not verify"}
                </span>
              </div>
              <details>
                <summary>Body ({r.webhookId})</summary>
                <pre>{r.body}</pre>
              </details>
            </li>
          ))}
        </ul>
      )}
    </section>
  );
}

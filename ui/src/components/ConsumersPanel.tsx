import { useCallback, useEffect, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, ConsumerView, PullAccess } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ConsumerForm, curlExample, pullUrl } from "./ConsumerForm";
import { ConsumerPage } from "./ConsumerPage";
import { ErrorNotice } from "./ErrorNotice";
import { TrialWebhook } from "./TrialWebhook";

/** How often the list's counts are read again while the tab is open. */
const REFRESH_EVERY_MS = 2000;

/**
 * Consumers: what the profile's capture delivers to applications, by webhook (push), the pull API or
 * NATS JetStream.
 * The list with each consumer's counts and notices, "Create consumer", the signing secret or the pull
 * API token on demand, Retry and Skip for parked messages, and delete with a confirmation.
 */
export function ConsumersPanel({ profileId, profileName }: { profileId: string; profileName: string }) {
  const [consumers, setConsumers] = useState<ConsumerView[] | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [creating, setCreating] = useState(false);
  // The consumer whose page is open, by name.
  const [open, setOpen] = useState<string | null>(null);
  // The "Try a webhook" receiver's URL, once started.
  const [trial, setTrial] = useState<string | null>(null);
  const { busy: trying, error: trialError, run: runTrial } = useAction();

  const reload = useCallback(async () => {
    try {
      setConsumers(await backend.listConsumers(profileId));
      setError(null);
    } catch (e) {
      setError(e as BackendError);
    }
  }, [profileId]);

  useEffect(() => {
    if (open !== null) return;
    void reload();
    const timer = setInterval(() => void reload(), REFRESH_EVERY_MS);
    return () => clearInterval(timer);
  }, [reload, open]);

  async function tryWebhook() {
    const started = await runTrial(() => backend.tryWebhook(profileId));
    if (started) {
      setTrial(started.url);
      void reload();
    }
  }

  if (open !== null) {
    return <ConsumerPage profileId={profileId} name={open} onBack={() => setOpen(null)} />;
  }

  return (
    <section className="panel" data-testid="consumers-panel">
      <div className="card-head">
        <h2>Consumers</h2>
        {!creating && (
          <span className="actions">
            <button type="button" data-testid="consumer-new" onClick={() => setCreating(true)}>
              Create consumer
            </button>
            <button
              type="button"
              className="secondary"
              data-testid="consumer-try-webhook"
              disabled={trying}
              title="Deliver to a receiver inside Tidepool and see what arrives"
              onClick={() => void tryWebhook()}
            >
              Try a webhook
            </button>
          </span>
        )}
      </div>
      <p className="muted">
        Each consumer delivers the captured changes of its collections to an application, from the local store: a slow or
        stopped application never holds the replication slot.
      </p>
      {creating && (
        <ConsumerForm
          profileId={profileId}
          profileName={profileName}
          onCancel={() => setCreating(false)}
          onCreated={() => {
            setCreating(false);
            void reload();
          }}
        />
      )}
      {trialError && <ErrorNotice error={trialError} testId="trial-webhook-start-error" />}
      {trial && <TrialWebhook url={trial} onClose={() => setTrial(null)} />}
      {error && <ErrorNotice error={error} testId="consumers-error" />}
      {consumers === null && !error && (
        <p className="muted" data-testid="consumers-loading">
          Reading the consumers…
        </p>
      )}
      {consumers?.length === 0 && (
        <p className="muted" data-testid="consumers-empty">
          No consumers yet. Create one to send every change to a webhook, or let your application pull them.
        </p>
      )}
      {consumers && consumers.length > 0 && (
        <ul className="consumers" data-testid="consumers-list">
          {consumers.map((c) => (
            <ConsumerItem
              key={c.id}
              profileId={profileId}
              consumer={c}
              onChanged={() => void reload()}
              onOpen={() => setOpen(c.name)}
            />
          ))}
        </ul>
      )}
    </section>
  );
}

function ConsumerItem({
  profileId,
  consumer: c,
  onChanged,
  onOpen,
}: {
  profileId: string;
  consumer: ConsumerView;
  onChanged: () => void;
  onOpen: () => void;
}) {
  const [confirming, setConfirming] = useState(false);
  const [secret, setSecret] = useState<string | null>(null);
  const [access, setAccess] = useState<PullAccess | null>(null);
  const { busy, error, run } = useAction();
  const [done, setDone] = useState<string | null>(null);
  const id = `consumer-${c.name}`;

  async function act(what: () => Promise<string | void>) {
    setDone(null);
    const answered = await run(async () => ({ said: await what() }));
    if (!answered) return;
    if (answered.said) setDone(answered.said);
    onChanged();
  }

  const d = c.destination;
  return (
    <li className="card consumer" data-testid={id}>
      <div className="card-head">
        <strong data-testid={`${id}-name`}>{c.name}</strong>
        <span className="badge" data-testid={`${id}-mode`}>
          {c.mode}
        </span>
        {c.paused && (
          <span className="badge warn" data-testid={`${id}-paused`}>
            paused
          </span>
        )}
        <button type="button" className="secondary" data-testid={`${id}-open`} onClick={onOpen}>
          Open
        </button>
      </div>
      <dl className="facts">
        <dt>Collections</dt>
        <dd data-testid={`${id}-collections`}>{c.collections.join(", ")}</dd>
        <dt>{d.type === "webhook" ? "Push to" : d.type === "nats" ? "Publish to" : "Pull from"}</dt>
        <dd data-testid={`${id}-destination`}>
          <code>
            {d.type === "webhook"
              ? d.url
              : d.type === "nats"
                ? `${d.url} ${d.subject}${d.stream ? ` (stream ${d.stream})` : ""}`
                : pullUrl(c.name, access?.baseUrl)}
          </code>
        </dd>
        {c.filter && (
          <>
            <dt>Filter</dt>
            <dd>
              <code>{c.filter}</code>
            </dd>
          </>
        )}
        <dt>Pending</dt>
        <dd data-testid={`${id}-pending`}>{c.pending}</dd>
        <dt>Failing</dt>
        <dd data-testid={`${id}-failed`}>{c.failed}</dd>
      </dl>
      {c.notices.length > 0 && (
        <ul className="warnings" data-testid={`${id}-notices`}>
          {c.notices.map((n) => (
            <li key={n.atMs + n.message} className="health warn" data-kind={n.kind}>
              {n.message}
            </li>
          ))}
        </ul>
      )}
      {c.parked.length > 0 && (
        <div data-testid={`${id}-parked`}>
          <h4>Parked after their last retry</h4>
          {c.failed > c.parked.length && (
            <p className="muted" data-testid={`${id}-parked-more`}>
              The oldest {c.parked.length} of {c.failed}; Retry and Skip act on all of them.
            </p>
          )}
          <ul>
            {c.parked.map((p) => (
              <li key={p.seq} data-testid={`${id}-parked-${p.seq}`}>
                Change {p.seq}, {p.attempts} attempts: {p.lastError ?? "no error recorded"}
              </li>
            ))}
          </ul>
          <div className="actions">
            <button
              type="button"
              data-testid={`${id}-retry`}
              disabled={busy}
              onClick={() => void act(async () => `${await backend.retryConsumer(profileId, c.name)} queued again`)}
            >
              Retry
            </button>
            <button
              type="button"
              className="secondary"
              data-testid={`${id}-skip`}
              disabled={busy}
              onClick={() => void act(async () => `${await backend.skipConsumer(profileId, c.name)} skipped`)}
            >
              Skip
            </button>
          </div>
        </div>
      )}
      {d.type === "webhook" && (
        <div className="row">
          {secret === null ? (
            <button
              type="button"
              className="secondary"
              data-testid={`${id}-reveal`}
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
              <code data-testid={`${id}-secret`}>{secret}</code>
              <button type="button" className="secondary" data-testid={`${id}-hide`} onClick={() => setSecret(null)}>
                Hide
              </button>
              <span className="hint">
                Verify each request's webhook-signature with a Standard Webhooks library and this secret.
              </span>
            </>
          )}
        </div>
      )}
      {d.type === "pull" &&
        (access === null ? (
          <div className="row">
            <button
              type="button"
              className="secondary"
              data-testid={`${id}-reveal-token`}
              disabled={busy}
              onClick={() =>
                void act(async () => {
                  setAccess(await backend.revealPullToken(profileId));
                })
              }
            >
              Reveal token
            </button>
          </div>
        ) : (
          <div data-testid={`${id}-pull-access`}>
            <div className="row">
              <code data-testid={`${id}-token`}>{access.token}</code>
              <button type="button" className="secondary" data-testid={`${id}-hide-token`} onClick={() => setAccess(null)}>
                Hide
              </button>
              <span className="hint">The bearer token of every pull consumer of this connection.</span>
            </div>
            <pre data-testid={`${id}-curl`}>{curlExample(c.name, access.token, access.baseUrl)}</pre>
            {access.problem && (
              <p className="health warn" role="status" data-testid={`${id}-pull-problem`}>
                {access.problem}
              </p>
            )}
          </div>
        ))}
      {done && (
        <p className="muted" role="status" data-testid={`${id}-done`}>
          {done}
        </p>
      )}
      {error && <ErrorNotice error={error} testId={`${id}-error`} />}
      <div className="actions">
        {confirming ? (
          <span className="confirm" role="group" aria-label={`Delete ${c.name}?`}>
            Delete {c.name}, its queue and its keychain entries?
            <button type="button" data-testid={`${id}-delete-confirm`} disabled={busy} onClick={() => void act(() => backend.removeConsumer(profileId, c.name).then(() => undefined))}>
              Delete
            </button>
            <button type="button" className="secondary" data-testid={`${id}-delete-cancel`} onClick={() => setConfirming(false)}>
              Cancel
            </button>
          </span>
        ) : (
          <button type="button" className="secondary" data-testid={`${id}-delete`} onClick={() => setConfirming(true)}>
            Delete
          </button>
        )}
      </div>
    </li>
  );
}

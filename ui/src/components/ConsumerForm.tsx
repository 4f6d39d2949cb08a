import { useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import {
  CONSUMER_ACTIONS,
  DEFAULT_NATS_SUBJECT,
  type BackendError,
  type CollectionInfo,
  type Consumer,
  type ConsumerAction,
  type ConsumerMode,
  type ConsumerSpec,
  type ConsumerStart,
  type FilterCheck,
  type FilterProblem,
  type NatsAuth,
} from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";

/** Where the pull API listens by default (Sequin's port), in the app as with `tidepool capture --listen`. */
export const PULL_BASE = "http://127.0.0.1:7376";

/** The URL an application receives a pull consumer's messages from. */
export const pullUrl = (name: string, base: string = PULL_BASE) =>
  `${base}/api/http_pull_consumers/${encodeURIComponent(name || "<name>")}/receive`;

/** A copyable example: receive up to 10 messages, waiting up to 5 s for the first; the token filled in once revealed. */
export const curlExample = (name: string, token?: string, base: string = PULL_BASE) =>
  `curl -s -H "Authorization: Bearer ${token ?? "$TIDEPOOL_TOKEN"}" "${pullUrl(name, base)}?batch_size=10&wait_for=5000"`;

type SecretRow = { name: string; value: string };

/** The position an engine filter error names, when the message carries one (`line L, column C`). */
export function filterPosition(message: string): { line: number; column: number } | null {
  const m = /line (\d+), column (\d+)/.exec(message);
  return m ? { line: Number(m[1]), column: Number(m[2]) } : null;
}

/** `K=V` lines into headers; the first line that is not `K=V` is the error. */
function parseHeaders(text: string): { headers: Record<string, string> } | { bad: string } {
  const headers: Record<string, string> = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf("=");
    if (at <= 0) return { bad: line };
    headers[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return { headers };
}

/** An optional whole number field: blank is null; anything else must be a whole number. */
function wholeOrNull(text: string): number | null | "bad" {
  if (text.trim() === "") return null;
  const n = Number(text);
  return Number.isInteger(n) && n >= 0 ? n : "bad";
}

/**
 * "Create consumer", as Sequin's guide walks it: collections, actions, filter, rows or changes, where
 * it starts, then push (endpoint, headers, secret headers typed once, timeout, batch size, retries),
 * pull (visibility timeout, the pull URL and a curl example) or NATS JetStream (server, subject
 * template, stream, credentials typed once).
 */
export function ConsumerForm({
  profileId,
  profileName,
  onCreated,
  onCancel,
}: {
  profileId: string;
  profileName: string;
  onCreated: (consumer: Consumer) => void;
  onCancel: () => void;
}) {
  const [collections, setCollections] = useState<CollectionInfo[] | null>(null);
  const [collectionsError, setCollectionsError] = useState<BackendError | null>(null);
  const [name, setName] = useState("");
  const [chosen, setChosen] = useState<string[]>([]);
  const [actions, setActions] = useState<ConsumerAction[]>([...CONSUMER_ACTIONS]);
  const [filter, setFilter] = useState("");
  const [mode, setMode] = useState<ConsumerMode>("changes");
  const [start, setStart] = useState<ConsumerStart>("now");
  const [kind, setKind] = useState<"webhook" | "pull" | "nats">("webhook");
  const [natsUrl, setNatsUrl] = useState("nats://127.0.0.1:4222");
  const [subject, setSubject] = useState(DEFAULT_NATS_SUBJECT);
  const [stream, setStream] = useState("TIDEPOOL");
  const [natsAuth, setNatsAuth] = useState<NatsAuth["kind"]>("none");
  const [natsUser, setNatsUser] = useState("");
  const [credential, setCredential] = useState("");
  const [natsTls, setNatsTls] = useState(false);
  const [caFile, setCaFile] = useState("");
  const [url, setUrl] = useState("");
  const [headers, setHeaders] = useState("");
  const [secrets, setSecrets] = useState<SecretRow[]>([]);
  const [timeoutMs, setTimeoutMs] = useState("30000");
  const [batchSize, setBatchSize] = useState("1");
  const [maxRetries, setMaxRetries] = useState("");
  const [visibilityMs, setVisibilityMs] = useState("30000");
  const [check, setCheck] = useState<FilterCheck | null>(null);
  const [checking, setChecking] = useState(false);
  const [filterProblem, setFilterProblem] = useState<FilterProblem | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [saving, setSaving] = useState(false);
  const [copied, setCopied] = useState(false);

  useEffect(() => {
    let live = true;
    backend.collections(profileId).then(
      (c) => live && setCollections(c),
      (e) => {
        if (!live) return;
        setCollectionsError(e as BackendError);
        setCollections([]);
      },
    );
    return () => {
      live = false;
    };
  }, [profileId]);

  const toggle = <T,>(list: T[], item: T) => (list.includes(item) ? list.filter((x) => x !== item) : [...list, item]);

  // Only the latest check's answer is shown: an earlier one can arrive after it.
  const latestCheck = useRef(0);

  async function runCheck() {
    const ticket = ++latestCheck.current;
    setChecking(true);
    setError(null);
    try {
      const result = await backend.checkConsumerFilter(profileId, filter, chosen, actions);
      if (ticket !== latestCheck.current) return;
      setCheck(result);
      setFilterProblem(result.problem);
    } catch (e) {
      if (ticket === latestCheck.current) setError(e as BackendError);
    } finally {
      if (ticket === latestCheck.current) setChecking(false);
    }
  }

  // The preview follows the expression as it is typed: checked half a second after the last key
  // (and when the collections or actions change), as the Check button does.
  useEffect(() => {
    if (filter.trim() === "") return;
    const timer = setTimeout(() => void runCheck(), 500);
    return () => clearTimeout(timer);
    // runCheck reads exactly these.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [filter, chosen, actions, profileId]);

  function invalid(field: string, problem: string): BackendError {
    return { kind: "InvalidInput", message: `${field}: ${problem}` };
  }

  function buildSpec(): ConsumerSpec | BackendError {
    const base = {
      name: name.trim(),
      collections: chosen,
      actions: actions.length === CONSUMER_ACTIONS.length ? [] : actions,
      filter: filter.trim() === "" ? null : filter,
      mode,
      start,
      groupBy: [],
    };
    if (actions.length === 0) return invalid("actions", "choose at least one action");
    if (kind === "pull") {
      const visibility = wholeOrNull(visibilityMs);
      if (visibility === null || visibility === "bad") return invalid("visibility-timeout-ms", "a whole number of milliseconds");
      return {
        ...base,
        destination: { type: "pull", visibilityTimeoutMs: visibility, maxAckPending: 10000, maxWaiting: 20 },
      };
    }
    if (kind === "nats") {
      const timeout = wholeOrNull(timeoutMs);
      if (timeout === null || timeout === "bad") return invalid("timeout-ms", "a whole number of milliseconds");
      const batch = wholeOrNull(batchSize);
      if (batch === null || batch === "bad") return invalid("batch-size", "a whole number of messages");
      const retries = wholeOrNull(maxRetries);
      if (retries === "bad") return invalid("max-retries", "a whole number, or blank to retry forever");
      if (natsAuth !== "none" && credential === "") return invalid("nats-credential", "enter the credential, or choose no credentials");
      const auth: NatsAuth = natsAuth === "userPassword" ? { kind: "userPassword", user: natsUser.trim() } : { kind: natsAuth };
      return {
        ...base,
        destination: {
          type: "nats",
          url: natsUrl.trim(),
          subject: subject.trim(),
          stream: stream.trim() === "" ? null : stream.trim(),
          auth,
          tls: natsTls,
          caFile: natsTls && caFile.trim() !== "" ? caFile.trim() : null,
          timeoutMs: timeout,
          batchSize: batch,
          maxRetries: retries,
        },
      };
    }
    const parsed = parseHeaders(headers);
    if ("bad" in parsed) return invalid("header", `'${parsed.bad}' is not K=V`);
    const timeout = wholeOrNull(timeoutMs);
    if (timeout === null || timeout === "bad") return invalid("timeout-ms", "a whole number of milliseconds");
    const batch = wholeOrNull(batchSize);
    if (batch === "bad") return invalid("batch-size", "a whole number, or blank for one bare message per request");
    const retries = wholeOrNull(maxRetries);
    if (retries === "bad") return invalid("max-retries", "a whole number, or blank to retry forever");
    for (const s of secrets) {
      if (!s.name.trim()) return invalid("secret-header", "a secret header has no name");
    }
    return {
      ...base,
      destination: {
        type: "webhook",
        url: url.trim(),
        headers: parsed.headers,
        secretHeaders: secrets.map((s) => s.name.trim()),
        batchSize: batch,
        timeoutMs: timeout,
        maxRetries: retries,
        maxInFlight: 10,
      },
    };
  }

  async function save(event: React.FormEvent) {
    event.preventDefault();
    const spec = buildSpec();
    if ("kind" in spec) {
      setError(spec);
      return;
    }
    setSaving(true);
    setError(null);
    setFilterProblem(null);
    try {
      const created = await backend.addConsumer(
        profileId,
        spec,
        kind === "webhook" ? secrets.map((s) => ({ name: s.name.trim(), value: s.value })) : [],
        kind === "nats" && natsAuth !== "none" ? credential : undefined,
      );
      // Secret values are in the keychain now; none stays in the window.
      setSecrets([]);
      setCredential("");
      onCreated(created);
    } catch (e) {
      const err = e as BackendError;
      setError(err);
      if (err.message.startsWith("filter:")) {
        const at = filterPosition(err.message);
        setFilterProblem({ message: err.message, line: at?.line ?? null, column: at?.column ?? null });
      }
    } finally {
      setSaving(false);
    }
  }

  /** The timeout, batch and retry fields, shared by push and NATS (named as each destination says it). */
  const limits = (timeoutLabel: string, batchLabel: string) => (
    <div className="row">
      <label>
        {timeoutLabel}
        <input data-testid="consumer-timeout" inputMode="numeric" value={timeoutMs} onChange={(e) => setTimeoutMs(e.target.value)} />
      </label>
      <label>
        {batchLabel}
        <input data-testid="consumer-batch-size" inputMode="numeric" value={batchSize} onChange={(e) => setBatchSize(e.target.value)} />
      </label>
      <label>
        Max retries
        <input
          data-testid="consumer-max-retries"
          inputMode="numeric"
          value={maxRetries}
          placeholder="forever"
          onChange={(e) => setMaxRetries(e.target.value)}
        />
      </label>
    </div>
  );

  return (
    <form className="card form consumer-form" data-testid="consumer-form" onSubmit={(e) => void save(e)} aria-label="Create consumer">
      <h3>Create consumer</h3>
      <label>
        Name
        <input data-testid="consumer-name" value={name} onChange={(e) => setName(e.target.value)} placeholder="orders-to-app" />
        <span className="hint">Letters, digits, '-', '_' or '.'; messages carry it as metadata.consumer.name.</span>
      </label>

      <fieldset data-testid="consumer-collections">
        <legend>Collections</legend>
        {collectionsError && <ErrorNotice error={collectionsError} testId="consumer-collections-error" />}
        {collections === null && <p className="muted">Reading the collections…</p>}
        {collections?.length === 0 && !collectionsError && (
          <p className="muted" data-testid="consumer-no-collections">
            No collections yet: start the capture first, consumers deliver what it stores.
          </p>
        )}
        {collections?.map((c) => (
          <label key={c.name} className="choice">
            <input
              type="checkbox"
              data-testid={`consumer-collection-${c.name}`}
              checked={chosen.includes(c.name)}
              onChange={() => setChosen(toggle(chosen, c.name))}
            />
            {c.name}
          </label>
        ))}
      </fieldset>

      <fieldset data-testid="consumer-actions">
        <legend>Actions</legend>
        {CONSUMER_ACTIONS.map((a) => (
          <label key={a} className="choice">
            <input
              type="checkbox"
              data-testid={`consumer-action-${a}`}
              checked={actions.includes(a)}
              onChange={() => setActions(toggle(actions, a))}
            />
            {a}
            {a === "read" && <span className="hint"> (rows read by a backfill)</span>}
          </label>
        ))}
      </fieldset>

      <label>
        Filter
        <textarea
          data-testid="consumer-filter"
          rows={2}
          value={filter}
          aria-invalid={filterProblem !== null}
          aria-describedby="consumer-filter-help"
          onChange={(e) => {
            setFilter(e.target.value);
            setCheck(null);
            setFilterProblem(null);
          }}
          placeholder='record.status == "shipped" && record.total > 100'
        />
        <span className="hint" id="consumer-filter-help">
          A CEL expression over record, changes, action and metadata; blank delivers everything. It is checked as you type.
        </span>
      </label>
      <div className="row">
        <button
          type="button"
          className="secondary"
          data-testid="consumer-filter-check"
          disabled={checking || filter.trim() === ""}
          onClick={() => void runCheck()}
        >
          {checking ? "Checking…" : "Check"}
        </button>
        {check && !check.problem && (
          <span data-testid="consumer-filter-ok">
            The expression is valid.
            {check.preview.map((p) => (
              <span key={p.collection} data-testid={`consumer-filter-preview-${p.collection}`}>
                {" "}
                {p.collection}: keeps {p.kept} of its last {p.tried} changes.
              </span>
            ))}
          </span>
        )}
      </div>
      {filterProblem && (
        <p className="field-error" role="alert" data-testid="consumer-filter-problem">
          {filterProblem.line !== null && filterProblem.column !== null && (
            <span data-testid="consumer-filter-position">
              Line {filterProblem.line}, column {filterProblem.column}:{" "}
            </span>
          )}
          {filterProblem.message}
        </p>
      )}

      <fieldset data-testid="consumer-mode">
        <legend>What to deliver</legend>
        <label className="choice">
          <input type="radio" name="mode" data-testid="consumer-mode-changes" checked={mode === "changes"} onChange={() => setMode("changes")} />
          Changes <span className="hint">every insert, update and delete, in commit order per row.</span>
        </label>
        <label className="choice">
          <input type="radio" name="mode" data-testid="consumer-mode-rows" checked={mode === "rows"} onChange={() => setMode("rows")} />
          Rows <span className="hint">the latest state of each row: updates not yet delivered replace each other.</span>
        </label>
      </fieldset>

      <fieldset data-testid="consumer-start">
        <legend>Start</legend>
        <label className="choice">
          <input type="radio" name="start" data-testid="consumer-start-now" checked={start === "now"} onChange={() => setStart("now")} />
          From now <span className="hint">only what is stored after the consumer is created.</span>
        </label>
        <label className="choice">
          <input
            type="radio"
            name="start"
            data-testid="consumer-start-beginning"
            checked={start === "beginning"}
            onChange={() => setStart("beginning")}
          />
          From the beginning <span className="hint">the stored history first, backfilled rows as read.</span>
        </label>
      </fieldset>

      <fieldset data-testid="consumer-kind">
        <legend>How it is delivered</legend>
        <label className="choice">
          <input type="radio" name="kind" data-testid="consumer-kind-webhook" checked={kind === "webhook"} onChange={() => setKind("webhook")} />
          Push <span className="hint">Tidepool POSTs signed requests to your endpoint.</span>
        </label>
        <label className="choice">
          <input type="radio" name="kind" data-testid="consumer-kind-pull" checked={kind === "pull"} onChange={() => setKind("pull")} />
          Pull <span className="hint">your application asks for messages and acknowledges them.</span>
        </label>
        <label className="choice">
          <input
            type="radio"
            name="kind"
            data-testid="consumer-kind-nats"
            checked={kind === "nats"}
            onChange={() => {
              setKind("nats");
              // A publish batch, not one bare message per request.
              if (batchSize === "1") setBatchSize("100");
              if (timeoutMs === "30000") setTimeoutMs("5000");
            }}
          />
          NATS JetStream <span className="hint">Tidepool publishes each change to a stream many services can read.</span>
        </label>
      </fieldset>

      {kind === "webhook" ? (
        <div className="form" data-testid="consumer-webhook">
          <label>
            Endpoint URL
            <input data-testid="consumer-url" type="url" value={url} onChange={(e) => setUrl(e.target.value)} placeholder="https://example.com/hook" />
          </label>
          <label>
            Headers
            <textarea
              data-testid="consumer-headers"
              rows={2}
              value={headers}
              onChange={(e) => setHeaders(e.target.value)}
              placeholder="x-team=shop"
            />
            <span className="hint">One K=V per line, sent with every request.</span>
          </label>
          <div data-testid="consumer-secret-headers">
            <span className="hint">
              Secret headers: their values go to the OS keychain when you create the consumer and are never shown again.
            </span>
            {secrets.map((s, i) => (
              <div className="row" key={i}>
                <label>
                  Secret header name
                  <input
                    data-testid={`consumer-secret-name-${i}`}
                    value={s.name}
                    onChange={(e) => setSecrets(secrets.map((x, j) => (j === i ? { ...x, name: e.target.value } : x)))}
                  />
                </label>
                <label>
                  Value
                  <input
                    type="password"
                    autoComplete="off"
                    data-testid={`consumer-secret-value-${i}`}
                    value={s.value}
                    onChange={(e) => setSecrets(secrets.map((x, j) => (j === i ? { ...x, value: e.target.value } : x)))}
                  />
                </label>
                <button type="button" className="secondary" onClick={() => setSecrets(secrets.filter((_, j) => j !== i))}>
                  Remove
                </button>
              </div>
            ))}
            <button
              type="button"
              className="link"
              data-testid="consumer-add-secret-header"
              onClick={() => setSecrets([...secrets, { name: "", value: "" }])}
            >
              Add a secret header
            </button>
          </div>
          {limits("Timeout (ms)", "Batch size")}
          <span className="hint">
            Batch size blank: one bare message per request. Max retries blank: retry forever (backoff up to 10 min); after that a
            message is parked for Retry or Skip.
          </span>
        </div>
      ) : kind === "nats" ? (
        <div className="form" data-testid="consumer-nats">
          <label>
            Server URL
            <input data-testid="consumer-nats-url" value={natsUrl} onChange={(e) => setNatsUrl(e.target.value)} placeholder="nats://127.0.0.1:4222" />
            <span className="hint">nats://host:port or tls://host:port; several separated by commas.</span>
          </label>
          <label>
            Subject
            <input data-testid="consumer-nats-subject" value={subject} onChange={(e) => setSubject(e.target.value)} />
            <span className="hint">
              {"{database}"}, {"{schema}"}, {"{table}"} and {"{action}"} are filled in per message; each subject gets its changes
              in commit order.
            </span>
          </label>
          <label>
            Stream
            <input data-testid="consumer-nats-stream" value={stream} onChange={(e) => setStream(e.target.value)} placeholder="blank: a stream you made" />
            <span className="hint">Created if missing, capturing every subject above. Blank: publish to a stream you made.</span>
          </label>
          <div className="row">
            <label>
              Credentials
              <select data-testid="consumer-nats-auth" value={natsAuth} onChange={(e) => setNatsAuth(e.target.value as NatsAuth["kind"])}>
                <option value="none">None</option>
                <option value="token">Token</option>
                <option value="userPassword">User and password</option>
                <option value="nkey">NKey seed</option>
                <option value="creds">.creds file content</option>
              </select>
            </label>
            {natsAuth === "userPassword" && (
              <label>
                User
                <input data-testid="consumer-nats-user" value={natsUser} onChange={(e) => setNatsUser(e.target.value)} />
              </label>
            )}
            <label className="choice">
              <input type="checkbox" data-testid="consumer-nats-tls" checked={natsTls} onChange={(e) => setNatsTls(e.target.checked)} />
              Require TLS
            </label>
          </div>
          {natsTls && (
            <label>
              Certificate authority file
              <input
                data-testid="consumer-nats-ca-file"
                value={caFile}
                onChange={(e) => setCaFile(e.target.value)}
                placeholder="blank: the system's authorities"
              />
              <span className="hint">A PEM file of the authority that signed the server&apos;s certificate.</span>
            </label>
          )}
          {natsAuth !== "none" &&
            (natsAuth === "creds" ? (
              <label>
                .creds content
                <textarea
                  data-testid="consumer-nats-credential"
                  rows={4}
                  autoComplete="off"
                  spellCheck={false}
                  value={credential}
                  onChange={(e) => setCredential(e.target.value)}
                />
              </label>
            ) : (
              <label>
                {natsAuth === "token" ? "Token" : natsAuth === "nkey" ? "NKey seed" : "Password"}
                <input
                  type="password"
                  autoComplete="off"
                  data-testid="consumer-nats-credential"
                  value={credential}
                  onChange={(e) => setCredential(e.target.value)}
                />
              </label>
            ))}
          {natsAuth !== "none" && (
            <span className="hint">Goes to the OS keychain when you create the consumer and is never shown again.</span>
          )}
          {limits("Ack timeout (ms)", "Publish batch")}
          <span className="hint">
            Each message carries its idempotency key as Nats-Msg-Id, so the stream drops a message published twice. Creating the
            consumer first connects to the server: a wrong address or credential is refused then.
          </span>
        </div>
      ) : (
        <div className="form" data-testid="consumer-pull">
          <label>
            Visibility timeout (ms)
            <input
              data-testid="consumer-visibility-timeout"
              inputMode="numeric"
              value={visibilityMs}
              onChange={(e) => setVisibilityMs(e.target.value)}
            />
            <span className="hint">A received message is offered again after this long unless acknowledged.</span>
          </label>
          <p>
            Pull URL: <code data-testid="consumer-pull-url">{pullUrl(name.trim())}</code>
          </p>
          <pre data-testid="consumer-curl">{curlExample(name.trim())}</pre>
          <div className="row">
            <button
              type="button"
              className="secondary"
              data-testid="consumer-copy-curl"
              onClick={() => {
                void navigator.clipboard?.writeText(curlExample(name.trim())).then(() => setCopied(true));
              }}
            >
              {copied ? "Copied" : "Copy curl example"}
            </button>
          </div>
          <p className="note" data-testid="consumer-pull-note">
            The app serves the pull API while this connection&apos;s capture runs, with a token of its own. Once the consumer
            is created, &quot;Reveal token&quot; on it shows the token and this example filled in (or run{" "}
            <code>tidepool api-token --profile {JSON.stringify(profileName)}</code>).
          </p>
        </div>
      )}

      {error && <ErrorNotice error={error} testId="consumer-form-error" place="form" />}
      <div className="actions">
        <button type="submit" data-testid="consumer-create" disabled={saving}>
          {saving ? "Creating…" : "Create consumer"}
        </button>
        <button type="button" className="secondary" data-testid="consumer-cancel" onClick={onCancel}>
          Cancel
        </button>
      </div>
    </form>
  );
}

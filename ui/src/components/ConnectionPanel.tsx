import { useRef, useState, type FormEvent } from "react";

import { testConnection } from "../lib/backend";
import { SSL_MODES, type BackendError, type ConnectionForm, type ErrorKind, type ServerFacts, type SslMode } from "../lib/types";
import { ServerFactsView } from "./ServerFactsView";

type FormFields = Omit<ConnectionForm, "password">;

const EMPTY: FormFields = { address: "", user: "", database: "postgres", sslmode: "prefer" };

/** A heading per error kind: what kind of problem it is, before the engine's message says exactly what. */
const ERROR_TITLES: Record<ErrorKind, string> = {
  InvalidInput: "Check the form",
  Connection: "Could not reach the server",
  Authentication: "The server refused the login",
  Tls: "TLS problem",
  Permission: "Not allowed",
  NotFound: "Not found",
  Postgres: "The server reported an error",
  Keychain: "Keychain problem",
  Internal: "Something went wrong in Tidepool",
};

type State =
  | { status: "idle" }
  | { status: "testing" }
  | { status: "connected"; facts: ServerFacts }
  | { status: "failed"; error: BackendError };

/** The connection form with "Test connection": Estuary Flow's fields, facts or the error shown inline. */
export function ConnectionPanel() {
  const [form, setForm] = useState<FormFields>(EMPTY);
  // The password is an uncontrolled field read only on submit: React mirrors a controlled input's value
  // into its `value` attribute, which would put the password into the page's markup.
  const passwordRef = useRef<HTMLInputElement>(null);
  const [showAdvanced, setShowAdvanced] = useState(false);
  const [state, setState] = useState<State>({ status: "idle" });

  const update = <K extends keyof FormFields>(key: K, value: FormFields[K]) =>
    setForm((previous) => ({ ...previous, [key]: value }));

  async function onSubmit(event: FormEvent) {
    event.preventDefault();
    setState({ status: "testing" });
    try {
      const facts = await testConnection({ ...form, password: passwordRef.current?.value ?? "" });
      setState({ status: "connected", facts });
    } catch (error) {
      setState({ status: "failed", error: error as BackendError });
    }
  }

  const testing = state.status === "testing";
  return (
    <section className="card" aria-labelledby="connect-heading">
      <h2 id="connect-heading">Connect to PostgreSQL</h2>
      <p className="muted">
        Works with any PostgreSQL 10+ server, including Neon (use the direct host, not <code>-pooler</code>).
      </p>
      <form onSubmit={onSubmit} className="form" noValidate>
        <label>
          Server address
          <input
            data-testid="address"
            value={form.address}
            onChange={(e) => update("address", e.target.value)}
            placeholder="ep-cool-darkness-123456.us-east-2.aws.neon.tech:5432"
            autoComplete="off"
            spellCheck={false}
            required
          />
          <span className="hint">host[:port]; the port defaults to 5432</span>
        </label>
        <label>
          User
          <input
            data-testid="user"
            value={form.user}
            onChange={(e) => update("user", e.target.value)}
            placeholder="cdc_role"
            autoComplete="off"
            spellCheck={false}
            required
          />
        </label>
        <label>
          Password
          <input data-testid="password" type="password" ref={passwordRef} autoComplete="off" />
        </label>
        <label>
          Database
          <input
            data-testid="database"
            value={form.database}
            onChange={(e) => update("database", e.target.value)}
            autoComplete="off"
            spellCheck={false}
            required
          />
        </label>
        <button type="button" className="link" onClick={() => setShowAdvanced((v) => !v)} aria-expanded={showAdvanced}>
          {showAdvanced ? "Hide advanced options" : "Advanced options"}
        </button>
        {showAdvanced && (
          <label>
            SSL mode
            <select
              data-testid="sslmode"
              value={form.sslmode}
              onChange={(e) => update("sslmode", e.target.value as SslMode)}
            >
              {SSL_MODES.map((mode) => (
                <option key={mode} value={mode}>
                  {mode}
                </option>
              ))}
            </select>
            <span className="hint">As libpq: require encrypts; verify-full also checks the certificate and host name.</span>
          </label>
        )}
        <div className="actions">
          <button type="submit" data-testid="test-connection" disabled={testing}>
            {testing ? "Testing…" : "Test connection"}
          </button>
        </div>
      </form>
      <div aria-live="polite">
        {state.status === "connected" && <ServerFactsView facts={state.facts} />}
        {state.status === "failed" && (
          <div className="error" role="alert" data-testid="connection-error">
            <strong>{ERROR_TITLES[state.error.kind] ?? "Error"}</strong>{" "}
            <span className="badge" data-testid="connection-error-kind">
              {state.error.kind}
            </span>
            <p data-testid="connection-error-message">{state.error.message}</p>
          </div>
        )}
      </div>
    </section>
  );
}

import { useEffect, useRef, useState, type FormEvent } from "react";

import * as backend from "../lib/backend";
import { scrollIntoView } from "../lib/reveal";
import {
  emptyDraft,
  draftOf,
  SSL_MODES,
  type Advice,
  type BackendError,
  type HostKey,
  type ProfileDraft,
  type ProfileView,
  type Removed,
  type SaveCheck,
  type ServerFacts,
  type SslMode,
} from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { ServerFactsView } from "./ServerFactsView";

/** What the last test or save answered, shown under the buttons. */
type Outcome = { status: "idle" } | { status: "connected"; facts: ServerFacts } | { status: "saved"; tested: boolean };

type Step = "test" | "save" | "delete";

type Field = "address" | "password";

/**
 * The field a failed test or save is about, by the error's kind (never by its message): the address
 * for a server that cannot be reached, the password for a refused login.
 */
function fieldAtFault(error: BackendError): Field | undefined {
  if (error.kind === "Connection") return "address";
  if (error.kind === "Authentication") return "password";
  return undefined;
}

const FIELD_NOTES: Record<Field, string> = {
  address: "No server answered at this address.",
  password: "This user and password did not log in.",
};

interface Props {
  /** The saved profile being edited, or null for a new one. */
  profile: ProfileView | null;
  onSaved: (profile: ProfileView) => void;
  /** Called with what the engine deleted: the profile, its store, its keychain entries. */
  onDeleted: (removed: Removed) => void;
  /** Focuses the first field on opening (the user asked for the form). */
  autoFocus?: boolean;
}

/** The connection form: Estuary Flow's fields, Sequin's Autofill with URL, save, test, delete. */
export function ProfileEditor({ profile, onSaved, onDeleted, autoFocus = false }: Props) {
  const [draft, setDraft] = useState<ProfileDraft>(() => (profile ? draftOf(profile) : emptyDraft()));
  const [showAdvanced, setShowAdvanced] = useState(false);
  const [autofillOpen, setAutofillOpen] = useState(false);
  // Shown right under the URL it is about, not below the form where nobody looks after the click.
  const { error: autofillError, setError: setAutofillError, run: runAutofill } = useAction();
  const [advice, setAdvice] = useState<Advice[]>([]);
  const [outcome, setOutcome] = useState<Outcome>({ status: "idle" });
  // Test, save and delete share one busy state and one error; `during` says which command they are about.
  const { busy, error, setError, run } = useAction();
  const [during, setDuring] = useState<Step>("test");
  const [confirmDelete, setConfirmDelete] = useState(false);
  // The password is an uncontrolled field read only when needed: React mirrors a controlled input's
  // value into its `value` attribute, which would put the password into the page's markup.
  const passwordRef = useRef<HTMLInputElement>(null);
  // The SSH private key and its passphrase likewise: read when sent, never in state or markup.
  const sshKeyRef = useRef<HTMLTextAreaElement>(null);
  const sshPassphraseRef = useRef<HTMLInputElement>(null);
  const [hostKey, setHostKey] = useState<HostKey | null>(null);
  const { error: hostKeyError, setError: setHostKeyError, run: runHostKey } = useAction();
  const autofillRef = useRef<HTMLTextAreaElement>(null);
  const resultRef = useRef<HTMLDivElement>(null);
  const nameRef = useRef<HTMLInputElement>(null);
  useEffect(() => {
    if (autoFocus) nameRef.current?.focus();
  }, [autoFocus]);

  useEffect(() => {
    setDraft(profile ? draftOf(profile) : emptyDraft());
    setOutcome({ status: "idle" });
    setError(null);
    setAdvice([]);
    setConfirmDelete(false);
    setHostKey(null);
    setHostKeyError(null);
    if (passwordRef.current) passwordRef.current.value = "";
    if (sshKeyRef.current) sshKeyRef.current.value = "";
    if (sshPassphraseRef.current) sshPassphraseRef.current.value = "";
  }, [profile, setError, setHostKeyError]);

  // A test's, save's or delete's outcome appears under the buttons: bring it into view, which in a
  // short window is below the fold.
  useEffect(() => {
    if (outcome.status !== "idle" || error) scrollIntoView(resultRef.current);
  }, [outcome, error]);

  const update = <K extends keyof ProfileDraft>(key: K, value: ProfileDraft[K]) =>
    setDraft((previous) => ({ ...previous, [key]: value }));
  const password = () => passwordRef.current?.value ?? "";
  // What is sent: the form, plus a newly entered SSH key on its way to the keychain.
  const outgoing = (form: ProfileDraft = draft): ProfileDraft => ({
    ...form,
    sshKey: form.sshAddress !== null ? sshKeyRef.current?.value || null : null,
    sshPassphrase: form.sshAddress !== null ? sshPassphraseRef.current?.value || null : null,
  });
  // Each command starts the result area afresh.
  function command<T>(step: Step, call: () => Promise<T>) {
    setDuring(step);
    setOutcome({ status: "idle" });
    return run(call);
  }

  async function applyAutofill() {
    const fill = await runAutofill(() => backend.autofill(autofillRef.current?.value ?? ""));
    if (!fill) return;
    setDraft((previous) => ({
      ...fill.draft,
      name: previous.name,
      passwordStorage: previous.passwordStorage,
      encryptStore: previous.encryptStore,
      // A database URL says nothing of the bastion in front of it.
      sshAddress: previous.sshAddress,
      sshHostKey: previous.sshHostKey,
    }));
    if (fill.password !== null && passwordRef.current) passwordRef.current.value = fill.password;
    if (autofillRef.current) autofillRef.current.value = "";
    setAdvice(fill.advice);
    setShowAdvanced(fill.draft.sslmode !== "prefer" || fill.draft.options !== null);
    setAutofillOpen(false);
    setOutcome({ status: "idle" });
    setError(null);
  }

  function switchToDirectHost(item: Advice) {
    setDraft((previous) => ({ ...previous, address: previous.address.replace(item.pooledHost, item.directHost) }));
    setAdvice((list) => list.filter((a) => a !== item));
  }

  // Save logs in first (the engine refuses to store what did not), as Estuary Flow and Sequin test on
  // save; "Save without testing" is the explicit way past a failed test, and the result says so.
  async function save(check: SaveCheck, form: ProfileDraft = draft) {
    const saved = await command("save", () =>
      backend.saveProfile(profile?.id ?? null, outgoing(form), password(), check),
    );
    if (!saved) return;
    if (passwordRef.current) passwordRef.current.value = "";
    if (sshKeyRef.current) sshKeyRef.current.value = "";
    if (sshPassphraseRef.current) sshPassphraseRef.current.value = "";
    setOutcome({ status: "saved", tested: check === "testFirst" });
    onSaved(saved);
  }

  function submit(event: FormEvent) {
    event.preventDefault();
    void save("testFirst");
  }

  async function test(form: ProfileDraft = draft) {
    const facts = await command("test", () => backend.testConnection(profile?.id ?? null, outgoing(form), password()));
    if (facts) setOutcome({ status: "connected", facts });
  }

  // Trust on first use: the bastion's key is fetched and shown, and accepted only by a click.
  async function showHostKey() {
    const address = draft.sshAddress;
    if (address === null) return;
    const key = await runHostKey(() => backend.sshHostKey(address));
    if (key) setHostKey(key);
  }

  function trustHostKey(key: HostKey, retry: "test" | "save") {
    const form = { ...draft, sshHostKey: key.openssh };
    setDraft(form);
    setHostKey(null);
    if (retry === "save") void save("testFirst", form);
    else void test(form);
  }

  async function remove() {
    if (!profile) return;
    const removed = await command("delete", () => backend.deleteProfile(profile.id));
    if (removed) onDeleted(removed);
  }

  const fault = error && during !== "delete" ? fieldAtFault(error) : undefined;
  // Marks the field the error below is about, for the eye and for screen readers.
  const marked = (field: Field) =>
    fault === field ? { "aria-invalid": true, "aria-describedby": `${field}-error connection-error` } : {};
  // The field's own line says what failed, right where the eye is; the notice below has the details.
  const fieldNote = (field: Field) =>
    fault === field && (
      <span className="field-error" id={`${field}-error`} data-testid={`${field}-error`}>
        {FIELD_NOTES[field]}
        {during === "save" ? " Nothing was saved." : ""}
      </span>
    );
  const keepsPassword = profile?.password === "keychain" && profile.secret === "inKeychain";
  // A save refused because its test failed can still be made on purpose (a server not reachable from
  // here yet); not for the form's own mistakes, which the engine refuses either way.
  const canSaveUntested =
    error !== null && during === "save" && error.kind !== "InvalidInput" && error.kind !== "Keychain";
  return (
    <section className="card" aria-labelledby="editor-heading">
      <div className="card-head">
        <h2 id="editor-heading" data-testid="editor-heading">{profile ? profile.name : "New connection"}</h2>
        <button type="button" className="secondary" data-testid="autofill-open" onClick={() => setAutofillOpen((v) => !v)}>
          Autofill with URL
        </button>
      </div>
      {autofillOpen && (
        <div className="autofill">
          <label>
            Connection string
            <textarea
              ref={autofillRef}
              data-testid="autofill-input"
              aria-invalid={autofillError !== null}
              aria-describedby={autofillError ? "autofill-hint autofill-error" : "autofill-hint"}
              onChange={() => autofillError && setAutofillError(null)}
              rows={2}
              spellCheck={false}
              placeholder="postgresql://user:password@ep-cool-darkness-123456.us-east-2.aws.neon.tech/neondb?sslmode=require"
            />
            <span className="hint" id="autofill-hint">
              A postgres:// URL or key=value pairs. The password goes to the keychain when you save.
            </span>
          </label>
          {autofillError && (
            <div ref={scrollIntoView}>
              <ErrorNotice error={autofillError} testId="autofill-error" id="autofill-error" place="form" />
            </div>
          )}
          <div className="actions">
            <button type="button" data-testid="autofill-apply" onClick={applyAutofill}>
              Fill in the form
            </button>
          </div>
        </div>
      )}
      {advice.map((item) => (
        <div className="warning" role="status" key={item.pooledHost} data-testid="pooler-warning">
          <strong>This is Neon's pooled host.</strong> Logical replication needs the direct host: connection pooling
          (PgBouncer in transaction mode) cannot carry a replication connection.{" "}
          <button type="button" className="link" data-testid="switch-direct-host" onClick={() => switchToDirectHost(item)}>
            Use {item.directHost}
          </button>
        </div>
      ))}
      {profile?.untested && outcome.status !== "saved" && (
        <p className="warning" role="status" data-testid="untested-note">
          Saved without testing: these settings have not logged in yet. Save tests them again.
        </p>
      )}
      <form onSubmit={submit} className="form" noValidate>
        <label>
          Name
          <input data-testid="name" ref={nameRef} value={draft.name} onChange={(e) => update("name", e.target.value)} placeholder="Production" autoComplete="off" />
        </label>
        <label>
          Server address
          <input
            data-testid="address"
            {...marked("address")}
            value={draft.address}
            onChange={(e) => update("address", e.target.value)}
            placeholder="ep-cool-darkness-123456.us-east-2.aws.neon.tech:5432"
            autoComplete="off"
            spellCheck={false}
          />
          <span className="hint">host[:port]; the port defaults to 5432</span>
          {fieldNote("address")}
        </label>
        <label>
          User
          <input data-testid="user" value={draft.user} onChange={(e) => update("user", e.target.value)} placeholder="cdc_role" autoComplete="off" spellCheck={false} />
        </label>
        <label>
          Password
          <input data-testid="password" type="password" ref={passwordRef} autoComplete="off" {...marked("password")} />
          <span className="hint">
            {draft.passwordStorage === "askEachTime"
              ? "Not stored: typed each time you connect."
              : keepsPassword
                ? "Stored in the OS keychain. Leave empty to keep it; type a new one to replace it."
                : "Stored only in the OS keychain, never in a file."}
          </span>
          {fieldNote("password")}
        </label>
        <label>
          Database
          <input data-testid="database" value={draft.database} onChange={(e) => update("database", e.target.value)} autoComplete="off" spellCheck={false} />
        </label>
        <fieldset className="inline">
          <legend>Password storage</legend>
          <label className="radio">
            <input type="radio" name="storage" data-testid="storage-keychain" checked={draft.passwordStorage === "keychain"} onChange={() => update("passwordStorage", "keychain")} />
            OS keychain
          </label>
          <label className="radio">
            <input type="radio" name="storage" data-testid="storage-ask" checked={draft.passwordStorage === "askEachTime"} onChange={() => update("passwordStorage", "askEachTime")} />
            Ask each time
          </label>
        </fieldset>
        <label className="checkbox">
          <input
            type="checkbox"
            data-testid="encrypt-store"
            checked={draft.encryptStore ?? true}
            onChange={(e) => update("encryptStore", e.target.checked)}
          />
          Encrypt the captured rows on this machine
          <span className="note">
            {" "}
            The key stays in the OS keychain. Losing it loses only the local copy, never your database: it can be
            captured again.{profile ? " A store that already holds rows keeps its setting until it is discarded." : ""}
          </span>
        </label>
        <label className="checkbox">
          <input
            type="checkbox"
            data-testid="ssh-enable"
            checked={draft.sshAddress !== null}
            onChange={(e) => update("sshAddress", e.target.checked ? "" : null)}
          />
          Connect through an SSH bastion
          <span className="note"> For a database reachable only from a jump host. Every connection goes through it.</span>
        </label>
        {draft.sshAddress !== null && (
          <div className="advanced" data-testid="ssh-section">
            <label>
              SSH address
              <input
                data-testid="ssh-address"
                value={draft.sshAddress}
                onChange={(e) => setDraft((previous) => ({ ...previous, sshAddress: e.target.value, sshHostKey: null }))}
                placeholder="ssh://ubuntu@bastion.example.com:22"
                autoComplete="off"
                spellCheck={false}
              />
              <span className="hint">The server address above is the database as the bastion reaches it.</span>
            </label>
            <label>
              Private key
              <textarea
                ref={sshKeyRef}
                data-testid="ssh-key"
                rows={3}
                spellCheck={false}
                autoComplete="off"
                placeholder="-----BEGIN OPENSSH PRIVATE KEY-----"
              />
              <span className="hint">
                {profile?.ssh ? "Stored in the OS keychain. Leave empty to keep it; paste a new one to replace it." : "Stored only in the OS keychain, never in a file."}
              </span>
            </label>
            <label>
              Key passphrase
              <input data-testid="ssh-passphrase" type="password" ref={sshPassphraseRef} autoComplete="off" />
            </label>
            <p className="hint" data-testid="ssh-host-key-state">
              {draft.sshHostKey ? `Host key accepted: ${draft.sshHostKey.split(" ")[0]}` : "The bastion's host key is shown for you to accept at the first connection."}
            </p>
          </div>
        )}
        <button type="button" className="link" data-testid="advanced-open" onClick={() => setShowAdvanced((v) => !v)} aria-expanded={showAdvanced}>
          {showAdvanced ? "Hide advanced options" : "Advanced options"}
        </button>
        {showAdvanced && (
          <div className="advanced">
            <label>
              SSL mode
              <select data-testid="sslmode" value={draft.sslmode} onChange={(e) => update("sslmode", e.target.value as SslMode)}>
                {SSL_MODES.map((mode) => (
                  <option key={mode} value={mode}>
                    {mode}
                  </option>
                ))}
              </select>
              <span className="hint">As libpq: require encrypts; verify-ca checks the authority; verify-full also checks the host name.</span>
            </label>
            <label>
              Root certificate file
              <input data-testid="sslrootcert" value={draft.sslrootcert ?? ""} onChange={(e) => update("sslrootcert", e.target.value || null)} placeholder="system roots" spellCheck={false} />
            </label>
            <label>
              Publication
              <input data-testid="publication" value={draft.publication ?? ""} onChange={(e) => update("publication", e.target.value || null)} placeholder="tidepool_publication" spellCheck={false} />
            </label>
            <label>
              Replication slot
              <input data-testid="slot" value={draft.slot ?? ""} onChange={(e) => update("slot", e.target.value || null)} placeholder="tidepool_slot" spellCheck={false} />
            </label>
            <label>
              Application name
              <input data-testid="application-name" value={draft.applicationName ?? ""} onChange={(e) => update("applicationName", e.target.value || null)} placeholder="tidepool" spellCheck={false} />
            </label>
          </div>
        )}
        <div className="actions">
          <button type="button" data-testid="test-connection" disabled={busy} onClick={() => void test()}>
            {busy && during === "test" ? "Testing…" : "Test connection"}
          </button>
          <button type="submit" className="secondary" data-testid="save-profile" disabled={busy} aria-describedby="save-hint">
            {busy && during === "save" ? "Testing and saving…" : "Save"}
          </button>
          {profile && !confirmDelete && (
            <button type="button" className="danger" data-testid="delete-profile" disabled={busy} onClick={() => setConfirmDelete(true)}>
              Delete
            </button>
          )}
          {profile && confirmDelete && (
            <span className="confirm">
              Delete “{profile.name}”, its captured rows on this machine and its keychain entries? Your database is not
              touched.{" "}
              <button type="button" className="danger" data-testid="confirm-delete" onClick={remove}>
                Delete
              </button>{" "}
              <button type="button" className="secondary" onClick={() => setConfirmDelete(false)}>
                Cancel
              </button>
            </span>
          )}
        </div>
        <p className="hint" id="save-hint">
          Save tests the connection first and keeps nothing that does not log in.
        </p>
      </form>
      <div aria-live="polite" ref={resultRef}>
        {outcome.status === "saved" &&
          (outcome.tested ? (
            <p className="ok" data-testid="saved" data-tested="true">
              Connection tested and saved.
            </p>
          ) : (
            <p className="warning" data-testid="saved" data-tested="false">
              Saved, not tested: nothing has logged in with these settings. Test the connection before you capture.
            </p>
          ))}
        {outcome.status === "connected" && <ServerFactsView facts={outcome.facts} />}
        {error && (
          <ErrorNotice error={error} testId="connection-error" id="connection-error" place="form">
            {canSaveUntested && (
              <span className="untested-choice">
                {fault ? "" : "Nothing was saved. "}
                <button type="button" className="secondary" data-testid="save-untested" onClick={() => void save("withoutTesting")}>
                  Save without testing
                </button>
              </span>
            )}
            {error.kind === "HostKey" && draft.sshAddress !== null && during !== "delete" && (
              <span className="host-key">
                {!hostKey && (
                  <button type="button" className="secondary" data-testid="ssh-show-host-key" onClick={() => void showHostKey()}>
                    Show the bastion's host key
                  </button>
                )}
                {hostKey && (
                  <span>
                    {hostKey.target} shows <code data-testid="ssh-fingerprint">{hostKey.fingerprint}</code>.{" "}
                    <button
                      type="button"
                      data-testid="ssh-trust"
                      onClick={() => trustHostKey(hostKey, during === "save" ? "save" : "test")}
                    >
                      Trust this host key
                    </button>
                  </span>
                )}
                {hostKeyError && <ErrorNotice error={hostKeyError} testId="ssh-host-key-error" place="form" />}
              </span>
            )}
            {error.kind === "Keychain" && during === "save" && (
              <button type="button" className="link" data-testid="use-ask-each-time" onClick={() => update("passwordStorage", "askEachTime")}>
                Ask for the password each time instead
              </button>
            )}
          </ErrorNotice>
        )}
      </div>
    </section>
  );
}

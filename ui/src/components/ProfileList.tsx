import type { ProfileView, SecretState } from "../lib/types";

export const SECRET_LABELS: Record<SecretState, string> = {
  inKeychain: "Password in keychain",
  missingFromKeychain: "Password missing from keychain",
  askEachTime: "Asks for the password",
  keychainUnavailable: "Keychain unavailable",
};

interface Props {
  profiles: ProfileView[] | null;
  selected: string | null;
  onSelect: (id: string) => void;
  onNew: () => void;
}

/** Saved connections, each with where its password stands. */
export function ProfileList({ profiles, selected, onSelect, onNew }: Props) {
  return (
    <nav className="sidebar" aria-label="Connections">
      <div className="sidebar-head">
        <h2>Connections</h2>
        <button type="button" data-testid="new-profile" onClick={onNew}>
          New
        </button>
      </div>
      {profiles === null && <p className="muted">Loading…</p>}
      {profiles?.length === 0 && (
        <p className="muted" data-testid="no-profiles">
          No saved connections yet. Fill in the form, or paste a connection string with Autofill with URL.
        </p>
      )}
      <ul data-testid="profile-list">
        {profiles?.map((p) => (
          <li key={p.id}>
            <button
              type="button"
              className={p.id === selected ? "profile active" : "profile"}
              data-testid={`profile-${p.name}`}
              aria-current={p.id === selected}
              onClick={() => onSelect(p.id)}
            >
              <span className="profile-name">{p.name}</span>
              <span className="profile-address">
                {p.user}@{p.address}/{p.database}
              </span>
              {p.ssh && (
                <span className="profile-address" data-testid={`ssh-${p.name}`}>
                  via {p.ssh.address}
                  {p.ssh.hostKey ? "" : ", host key not accepted yet"}
                </span>
              )}
              <span
                className={p.untested ? "secret untested" : `secret ${p.secret}`}
                data-testid={`secret-${p.name}`}
                data-state={p.secret}
                data-tested={p.untested ? "false" : "true"}
              >
                {SECRET_LABELS[p.secret]}
                {p.untested ? ", not tested" : ""}
              </span>
            </button>
          </li>
        ))}
      </ul>
    </nav>
  );
}

import { useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import type { KeychainStatus, NeonKeyStatus } from "../lib/types";
import { toBackendError, useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";

/** Settings: the keychain's state and the Neon API key (kept only in the keychain). */
export function SettingsPanel() {
  const [keychain, setKeychain] = useState<KeychainStatus | null>(null);
  const [neon, setNeon] = useState<NeonKeyStatus | null>(null);
  const { error, setError, run: runCommand } = useAction();
  const keyRef = useRef<HTMLInputElement>(null);

  useEffect(() => {
    backend.keychainStatus().then(setKeychain, (e) => setError(toBackendError(e)));
    backend.neonKeyStatus().then(setNeon, () => setNeon(null));
  }, [setError]);

  async function run(action: () => Promise<NeonKeyStatus>) {
    const status = await runCommand(action);
    if (!status) return;
    setNeon(status);
    // The key is in the keychain now; none stays in the window.
    if (keyRef.current) keyRef.current.value = "";
  }

  return (
    <section className="card" aria-labelledby="settings-heading">
      <h2 id="settings-heading">Settings</h2>
      <h3>OS keychain</h3>
      <p data-testid="keychain-status">
        {keychain === null
          ? "Checking…"
          : keychain.state === "available"
            ? `Available (${keychain.backend}). Passwords and the Neon API key are kept here and nowhere else.`
            : `Unavailable: ${keychain.reason}`}
      </p>
      <h3>Neon API key</h3>
      <p className="muted">
        Lets Tidepool enable logical replication and create roles in your Neon project. Create one under Account
        settings → API keys in the Neon Console.
      </p>
      <p data-testid="neon-key-status">{neon?.stored ? "A key is stored in the keychain." : "No key stored."}</p>
      <div className="form">
        <input ref={keyRef} type="password" data-testid="neon-key" placeholder="napi_…" autoComplete="off" />
        <div className="actions">
          <button type="button" data-testid="save-neon-key" onClick={() => run(() => backend.setNeonKey(keyRef.current?.value ?? ""))}>
            Save key
          </button>
          {neon?.stored && (
            <button type="button" className="secondary" data-testid="remove-neon-key" onClick={() => run(backend.removeNeonKey)}>
              Remove key
            </button>
          )}
        </div>
      </div>
      {error && <ErrorNotice error={error} testId="settings-error" />}
    </section>
  );
}

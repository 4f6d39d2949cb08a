import { useCallback, useEffect, useState } from "react";

import * as backend from "../lib/backend";
import { scrollIntoView } from "../lib/reveal";
import type { BackendError, PreflightCheck, ProfileView } from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";
import { NeonSection } from "./NeonSection";
import { PublicationFix } from "./PublicationFix";

const MARK: Record<PreflightCheck["status"], string> = { pass: "Pass", warn: "Warning", fail: "Fail" };

/**
 * The preflight checklist: every check with its status and explanation; a failing or warning check
 * with a fix shows the exact SQL (or Neon API request) first, and runs it only after "Run". The
 * publication fix asks which tables (never every table) and how to publish each table that would
 * otherwise refuse its writes. The Neon part sits above it for Neon hosts and linked profiles.
 */
export function SetupPanel({
  profile,
  onProfilesChanged = () => {},
}: {
  profile: ProfileView;
  onProfilesChanged?: () => void;
}) {
  const profileId = profile.id;
  const [checks, setChecks] = useState<PreflightCheck[] | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  const [running, setRunning] = useState<string | null>(null);
  // A fix that failed: shown under that check's Run button, where the click was, not atop the list.
  const [fixError, setFixError] = useState<{ check: string; error: BackendError } | null>(null);

  const load = useCallback(async () => {
    try {
      setChecks(await backend.preflight(profileId));
      setError(null);
    } catch (e) {
      setError(e as BackendError);
    }
  }, [profileId]);

  useEffect(() => {
    void load();
  }, [load]);

  /** After a link or a Neon action: the profile list (a role may have added a profile), then the checks. */
  const refresh = () => {
    onProfilesChanged();
    void load();
  };

  async function run(check: PreflightCheck) {
    if (!check.fix) return;
    setRunning(check.id);
    setFixError(null);
    try {
      await backend.runFix(profileId, check.fix.action);
      setOpen(null);
      // A fix may have added a profile (a new replication role).
      onProfilesChanged();
      await load();
    } catch (e) {
      setFixError({ check: check.id, error: e as BackendError });
    } finally {
      setRunning(null);
    }
  }

  return (
    <section className="panel" data-testid="setup-panel">
      <h2>Setup</h2>
      <p className="muted">
        Everything the capture needs from the server. A fix shows exactly what it will run before it runs.
      </p>
      <button type="button" className="secondary" data-testid="recheck" onClick={() => void load()}>
        Check again
      </button>
      <NeonSection profile={profile} onLinked={refresh} onChanged={refresh} />
      {error && <ErrorNotice error={error} testId="setup-error" />}
      {checks === null && !error && <p data-testid="checks-loading">Checking…</p>}
      <ul className="checks">
        {(checks ?? []).map((check) => (
          <li key={check.id} className={`check ${check.status}`} data-testid={`check-${check.id}`}>
            <span className="badge" data-testid={`check-${check.id}-status`} data-status={check.status}>
              {MARK[check.status]}
            </span>{" "}
            <strong>{check.title}</strong>
            <p>{check.explanation}</p>
            {check.fix && check.status !== "pass" && (
              <div className="fix">
                {open === check.id && check.fix.action.action === "publication" ? (
                  <PublicationFix
                    profileId={profileId}
                    fix={check.fix}
                    onCancel={() => setOpen(null)}
                    onRan={async () => {
                      setOpen(null);
                      await load();
                    }}
                  />
                ) : open === check.id ? (
                  <>
                    <p>This will run:</p>
                    <pre data-testid={`fix-${check.id}-sql`}>{check.fix.preview.join(";\n")}</pre>
                    {check.fix.warning && <p className="note">{check.fix.warning}</p>}
                    <button
                      type="button"
                      data-testid={`fix-${check.id}-run`}
                      disabled={running !== null}
                      onClick={() => void run(check)}
                    >
                      {running === check.id ? "Running…" : "Run"}
                    </button>{" "}
                    <button type="button" className="secondary" onClick={() => setOpen(null)}>
                      Cancel
                    </button>
                    {fixError?.check === check.id && (
                      <div ref={scrollIntoView}>
                        <ErrorNotice error={fixError.error} testId={`fix-${check.id}-error`} />
                      </div>
                    )}
                  </>
                ) : (
                  <button type="button" data-testid={`fix-${check.id}`} onClick={() => setOpen(check.id)}>
                    Fix…
                  </button>
                )}
              </div>
            )}
          </li>
        ))}
      </ul>
    </section>
  );
}

import { useCallback, useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import { scrollIntoView } from "../lib/reveal";
import type { BackendError, CaptureDefinition, PreflightCheck, ProfileView, RunAs } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { NeonSection } from "./NeonSection";
import { PreviewBox } from "./PreviewBox";
import { PublicationFix } from "./PublicationFix";
import { OWN_ROLE, RunAsChoice, RunsAs, runAsReady, withoutPassword } from "./RunAsChoice";

const MARK: Record<PreflightCheck["status"], string> = { pass: "Pass", warn: "Warning", fail: "Fail", step: "Step" };

/** What a badge means, for its tooltip. */
const MEANING: Record<PreflightCheck["status"], string> = {
  pass: "Nothing to do",
  warn: "Works, but deserves attention",
  fail: "The capture cannot work until it is fixed",
  step: "Not done yet, and nothing to fix: Tidepool does it itself when the capture starts",
};

/** The tabs the next-step button can lead to once nothing fails. */
export type SetupNext = "tables" | "capture";

const plural = (n: number, one: string) => `${n} ${one}${n === 1 ? "" : "s"}`;

/**
 * The line atop the checklist: how many checks fail (each must be fixed before a capture can run), or
 * that the capture can go ahead; steps Tidepool takes itself (the slot its first start creates) are
 * not counted as anything to do.
 */
export function summary(checks: PreflightCheck[]): string {
  const failing = checks.filter((c) => c.status === "fail").length;
  if (failing > 0) return `${plural(failing, "thing")} to fix before you can capture`;
  const warnings = checks.filter((c) => c.status === "warn").length;
  return warnings > 0 ? `Ready to capture (${plural(warnings, "warning")} worth a look)` : "Ready to capture";
}

/**
 * The preflight checklist: a one-line summary with the next step (the first failing check's fix, or
 * the Tables or Capture tab once nothing fails), then every check with its status and explanation; a
 * failing or warning check with a fix shows the exact SQL (or Neon API request) first, and runs it only
 * after "Run". The publication fix asks which tables (never every table) and how to publish each table
 * that would otherwise refuse its writes. A SQL fix runs as the profile's role, or, chosen in its
 * preview, as another saved profile for the same database or with an owner's password that is cleared
 * after the run; the checks then run again as the profile's role. The Neon part sits above it for Neon
 * hosts and linked profiles.
 */
export function SetupPanel({
  profile,
  profiles = [],
  onProfilesChanged = () => {},
  onGoTo = () => {},
}: {
  profile: ProfileView;
  /** Every saved profile: those for the same database are offered to run a fix as. */
  profiles?: ProfileView[];
  onProfilesChanged?: () => void;
  /** Opens another tab of the profile (the next step once nothing fails). */
  onGoTo?: (tab: SetupNext) => void;
}) {
  const profileId = profile.id;
  const [checks, setChecks] = useState<PreflightCheck[] | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [open, setOpen] = useState<string | null>(null);
  // Who the open fix runs as; back to the profile's role whenever another fix opens.
  const [runAs, setRunAs] = useState<RunAs>(OWN_ROLE);
  // The check whose fix ran last, which `fixing` and `fixError` are about. A failed fix's error is shown
  // under that check's Run button, where the click was, not atop the list.
  const [ranCheck, setRanCheck] = useState<string | null>(null);
  const { busy: fixing, error: fixError, run: runCommand } = useAction();
  // Whether tables were saved ("Save and publish"): the next step is then Capture, else Tables.
  const [definition, setDefinition] = useState<CaptureDefinition | null | undefined>(undefined);
  const items = useRef(new Map<string, HTMLLIElement>());
  const fixButtons = useRef(new Map<string, HTMLButtonElement>());
  // The check whose "Fix…" button gets the focus back once its preview is closed (Escape or Cancel).
  const [returnTo, setReturnTo] = useState<string | null>(null);
  useEffect(() => {
    if (returnTo === null || open !== null) return;
    fixButtons.current.get(returnTo)?.focus();
    setReturnTo(null);
  }, [returnTo, open]);
  const closeFix = (id: string) => {
    setOpen(null);
    setRunAs(OWN_ROLE);
    setReturnTo(id);
  };
  const openFix = (id: string) => {
    setRunAs(OWN_ROLE);
    setOpen(id);
  };

  const load = useCallback(async () => {
    // The definition only picks the next tab: a store that cannot be read must not hide the checks.
    void backend.captureDefinition(profileId).then(setDefinition, () => setDefinition(null));
    try {
      setChecks(await backend.preflight(profileId));
      setError(null);
    } catch (e) {
      setError(e as BackendError);
    }
  }, [profileId]);

  /** "Go to the first fix": the first failing check, in view and focused, its fix opened (nothing runs). */
  function goToFirstFailing(list: PreflightCheck[]) {
    const first = list.find((c) => c.status === "fail");
    if (!first) return;
    if (first.fix) openFix(first.id);
    const item = items.current.get(first.id);
    item?.scrollIntoView?.({ block: "start" });
    item?.focus();
  }

  useEffect(() => {
    void load();
  }, [load]);

  /** After a link or a Neon action: the profile list (a role may have added a profile), then the checks. */
  const refresh = () => {
    onProfilesChanged();
    void load();
  };

  async function run(check: PreflightCheck) {
    const fix = check.fix;
    if (!fix) return;
    setRanCheck(check.id);
    await runCommand(async () => {
      if (runAs.kind === "profile") await backend.runFix(profileId, fix.action);
      else await backend.runFix(profileId, fix.action, runAs);
      setOpen(null);
      setRunAs(OWN_ROLE);
      // A fix may have added a profile (a new replication role).
      onProfilesChanged();
      // Still running until the checks say what the fix changed.
      await load();
    });
    // A typed owner password is for one run only.
    setRunAs(withoutPassword);
  }

  const firstFailing = checks?.find((c) => c.status === "fail");
  return (
    <section className="panel" data-testid="setup-panel">
      <h2>Setup</h2>
      {checks !== null && (
        <div className="setup-summary" data-testid="setup-summary">
          <strong data-testid="setup-summary-text">{summary(checks)}</strong>{" "}
          {firstFailing ? (
            <button type="button" data-testid="setup-next" onClick={() => goToFirstFailing(checks)}>
              {firstFailing.fix ? "Go to the first fix" : "Show what to fix"}
            </button>
          ) : definition === undefined ? null : (
            <button
              type="button"
              data-testid="setup-next"
              onClick={() => onGoTo(definition ? "capture" : "tables")}
            >
              {definition ? "Go to Capture" : "Go to Tables"}
            </button>
          )}
        </div>
      )}
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
          <li
            key={check.id}
            className={`check ${check.status}`}
            data-testid={`check-${check.id}`}
            tabIndex={-1}
            ref={(element) => {
              if (element) items.current.set(check.id, element);
              else items.current.delete(check.id);
            }}
          >
            <span
              className="badge"
              data-testid={`check-${check.id}-status`}
              data-status={check.status}
              title={MEANING[check.status]}
            >
              {MARK[check.status]}
            </span>{" "}
            <strong>{check.title}</strong>
            <p>{check.explanation}</p>
            {check.fix && check.status !== "pass" && (
              <div className="fix">
                {open === check.id && check.fix.action.action === "publication" ? (
                  <PreviewBox label={`Fix: ${check.title}`} testId={`fix-${check.id}-preview`} onClose={() => closeFix(check.id)}>
                    <PublicationFix
                      profileId={profileId}
                      profile={profile}
                      profiles={profiles}
                      fix={check.fix}
                      onCancel={() => closeFix(check.id)}
                      onRan={async () => {
                        setOpen(null);
                        await load();
                      }}
                    />
                  </PreviewBox>
                ) : open === check.id ? (
                  <PreviewBox label={`Fix: ${check.title}`} testId={`fix-${check.id}-preview`} onClose={() => closeFix(check.id)}>
                    <p>This will run:</p>
                    <pre data-testid={`fix-${check.id}-sql`}>{check.fix.preview.join(";\n")}</pre>
                    {check.fix.warning && <p className="note">{check.fix.warning}</p>}
                    {!check.fix.action.action.startsWith("neon") && (
                      <RunsAs runAs={runAs} profile={profile} profiles={profiles} />
                    )}
                    <button
                      type="button"
                      data-testid={`fix-${check.id}-run`}
                      disabled={fixing || !runAsReady(runAs)}
                      onClick={() => void run(check)}
                    >
                      {fixing && ranCheck === check.id ? "Running…" : "Run"}
                    </button>{" "}
                    <button type="button" className="secondary" data-testid={`fix-${check.id}-cancel`} onClick={() => closeFix(check.id)}>
                      Cancel
                    </button>
                    {fixError && ranCheck === check.id && (
                      <div ref={scrollIntoView}>
                        <ErrorNotice error={fixError} testId={`fix-${check.id}-error`} />
                      </div>
                    )}
                    {!check.fix.action.action.startsWith("neon") && (
                      <RunAsChoice
                        profile={profile}
                        profiles={profiles}
                        needs={check.fix.needs}
                        value={runAs}
                        onChange={setRunAs}
                        refused={ranCheck === check.id && fixError?.kind === "Permission"}
                      />
                    )}
                  </PreviewBox>
                ) : (
                  <button
                    type="button"
                    data-testid={`fix-${check.id}`}
                    ref={(element) => {
                      if (element) fixButtons.current.set(check.id, element);
                      else fixButtons.current.delete(check.id);
                    }}
                    onClick={() => openFix(check.id)}
                  >
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

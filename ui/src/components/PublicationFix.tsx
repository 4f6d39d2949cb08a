import { useEffect, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, Choice, DiscoveredTable, Fix, ProfileView, PublicationPlan, RunAs, TableRef } from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";
import { KeylessChoices, defaultChoices } from "./KeylessChoices";
import { OWN_ROLE, RunAsChoice, RunsAs, runAsReady, withoutPassword } from "./RunAsChoice";

const key = (t: TableRef) => `${t.schema}.${t.table}`;

/**
 * The publication fix: the tables to publish (asked for when none are picked; never every table), a
 * question for each table that publishing would make refuse its writes (left out by default), and the
 * exact SQL of the current choices, planned by the engine. "Run" sends what was shown; the engine plans
 * again and refuses if that differs or a table is undecided. It runs as the profile's role or, as chosen,
 * another saved profile for the database or an owner's password, cleared after the run.
 */
export function PublicationFix({
  profileId,
  profile,
  profiles = [],
  fix,
  onRan,
  onCancel,
}: {
  profileId: string;
  /** The profile, for "Run as" (without it, the fix runs as the profile's role). */
  profile?: ProfileView;
  profiles?: ProfileView[];
  fix: Fix;
  onRan: () => Promise<void> | void;
  onCancel: () => void;
}) {
  const given = fix.action.action === "publication" ? fix.action.request.tables : [];
  const publication = fix.action.action === "publication" ? fix.action.request.publication : "";
  const asking = given.length === 0;
  const [tables, setTables] = useState<TableRef[]>(given);
  const [available, setAvailable] = useState<DiscoveredTable[] | null>(null);
  const [choices, setChoices] = useState<Choice[]>(() => defaultChoices(fix.plan?.hazards ?? []));
  const [plan, setPlan] = useState<PublicationPlan | null>(null);
  const [planning, setPlanning] = useState(false);
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<BackendError | null>(null);
  const [runAs, setRunAs] = useState<RunAs>(OWN_ROLE);

  // The tables to pick from are those the role that runs the fix can read: a capture role that owns
  // nothing reads none until the owner grants it, so run as the owner's profile, they are the owner's.
  const pickingAs = runAs.kind === "otherProfile" ? runAs.profile : profileId;
  useEffect(() => {
    if (!asking) return;
    let live = true;
    setAvailable(null);
    backend
      .discoverTables(pickingAs)
      .then((found) => live && setAvailable(found))
      .catch((e) => live && setError(e as BackendError));
    return () => {
      live = false;
    };
  }, [asking, pickingAs]);

  useEffect(() => {
    if (tables.length === 0) {
      setPlan(null);
      return;
    }
    let live = true;
    setPlanning(true);
    backend
      .planPublication(profileId, tables, choices)
      .then((p) => {
        if (!live) return;
        // A hazard seen for the first time starts left out.
        const fresh = defaultChoices(p.hazards).filter((d) => !choices.some((c) => key(c) === key(d)));
        if (fresh.length > 0) setChoices([...choices, ...fresh]);
        else setPlan(p);
        setError(null);
      })
      .catch((e) => live && setError(e as BackendError))
      .finally(() => live && setPlanning(false));
    return () => {
      live = false;
    };
  }, [profileId, tables, choices]);

  const toggle = (t: TableRef) =>
    setTables((current) => (current.some((c) => key(c) === key(t)) ? current.filter((c) => key(c) !== key(t)) : [...current, t]));

  async function run() {
    if (!plan) return;
    setRunning(true);
    const action = { action: "publication" as const, request: plan.request, statements: plan.statements };
    try {
      if (runAs.kind === "profile") await backend.runFix(profileId, action);
      else await backend.runFix(profileId, action, runAs);
      await onRan();
    } catch (e) {
      setError(e as BackendError);
    } finally {
      // A typed owner password is for one run only.
      setRunAs(withoutPassword);
      setRunning(false);
    }
  }

  const undecided = plan?.hazards.some((h) => !h.refusedNow && h.handling === null) ?? true;
  return (
    <div className="publication-fix" data-testid="publication-fix">
      {asking && (
        <fieldset data-testid="publication-pick">
          <legend>Which tables should {publication || "the publication"} publish?</legend>
          {available === null && !error && <p>Reading the tables…</p>}
          {available?.length === 0 && runAs.kind !== "otherProfile" && (
            <p className="note" data-testid="publication-pick-none">
              {profile ? `Role ${profile.user}` : "The profile's role"} can read no table yet. Pick them as the
              owner: &ldquo;Run as another role…&rdquo; below, then another saved profile. Setup then offers the
              schema grant for the tables published.
            </p>
          )}
          {(available ?? []).map((t) => (
            <label key={key(t)} className="choice">
              <input
                type="checkbox"
                data-testid={`publish-pick-${key(t)}`}
                checked={tables.some((c) => key(c) === key(t))}
                onChange={() => toggle({ schema: t.schema, table: t.table })}
              />{" "}
              {key(t)}
              {t.key.length === 0 && t.replicaIdentity !== "full" ? " (no primary key)" : ""}
            </label>
          ))}
        </fieldset>
      )}
      {plan && (
        <>
          <KeylessChoices hazards={plan.hazards} choices={choices} publication={publication} onChange={setChoices} />
          {plan.notes.length > 0 && (
            <ul className="notes" data-testid="fix-publication-notes">
              {plan.notes.map((n) => (
                <li key={n}>{n}</li>
              ))}
            </ul>
          )}
          <p>This will run:</p>
          <pre data-testid="fix-publication-sql">
            {plan.statements.length > 0 ? plan.statements.join(";\n") : "(nothing: every table is left out or published already)"}
          </pre>
        </>
      )}
      {tables.length === 0 && asking && <p className="muted">Pick at least one table.</p>}
      {profile && <RunsAs runAs={runAs} profile={profile} profiles={profiles} />}
      {error && <ErrorNotice error={error} testId="publication-fix-error" />}
      <button
        type="button"
        data-testid="fix-publication-run"
        disabled={running || planning || !plan || plan.statements.length === 0 || undecided || !runAsReady(runAs)}
        onClick={() => void run()}
      >
        {running ? "Running…" : "Run"}
      </button>{" "}
      <button type="button" className="secondary" onClick={onCancel}>
        Cancel
      </button>
      {profile && (
        <RunAsChoice
          profile={profile}
          profiles={profiles}
          needs={fix.needs}
          value={runAs}
          onChange={setRunAs}
          refused={error?.kind === "Permission"}
        />
      )}
    </div>
  );
}

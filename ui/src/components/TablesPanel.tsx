import { Fragment, useEffect, useMemo, useRef, useState } from "react";

import * as backend from "../lib/backend";
import { scrollIntoView } from "../lib/reveal";
import type {
  BackendError,
  Binding,
  BindingMode,
  Choice as KeylessChoice,
  DiscoveredTable,
  PublicationPlan,
  PublishPlan,
  TableRef,
} from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { KeylessChoices } from "./KeylessChoices";

/** A row of the picker: the discovered table and what the user chose for it. */
interface Choice {
  table: DiscoveredTable;
  selected: boolean;
  collection: string;
  mode: BindingMode;
  backfill: number;
}

type Discovery = { status: "loading" } | { status: "ready" } | { status: "failed"; error: BackendError };

/** How far "Save and publish" got: its plan awaits the confirmation, or it ran. */
type Publishing =
  | { status: "none" }
  | { status: "planned"; plan: PublishPlan; bindings: Binding[] }
  | { status: "published"; statements: string[] };

const keyLabel = (t: DiscoveredTable) =>
  t.keySource === "primaryKey"
    ? `primary key (${t.key.join(", ")})`
    : t.keySource === "uniqueIndex"
      ? `unique index ${t.keyIndex ?? ""} (${t.key.join(", ")})`
      : "no key";

const rowId = (t: DiscoveredTable) => `${t.schema}.${t.table}`;

/**
 * Estuary's binding picker: discover the tables, pick them, rename their collections, choose how each
 * starts, then "Save and publish": it shows what it will do (the publication's SQL, the slot, the
 * backfills, the start), and on confirmation does it all in one call; `onStarted` then shows the capture.
 */
export function TablesPanel({ profileId, onStarted }: { profileId: string; onStarted?: () => void }) {
  const [choices, setChoices] = useState<Choice[]>([]);
  const [discovery, setDiscovery] = useState<Discovery>({ status: "loading" });
  const [publishing, setPublishing] = useState<Publishing>({ status: "none" });
  // Planning and publishing, one at a time: the plan on screen tells which is running.
  const { busy, error, run: runCommand } = useAction();
  const [schemaOf, setSchemaOf] = useState<string | null>(null);
  const [search, setSearch] = useState("");
  /** Why a table's collection name is refused (by the engine's rules), per table. */
  const [nameErrors, setNameErrors] = useState<Record<string, string>>({});
  /** How each selected table without a usable replica identity is published, and the engine's plan. */
  const [keyless, setKeyless] = useState<KeylessChoice[]>([]);
  const [plan, setPlan] = useState<PublicationPlan | null>(null);

  useEffect(() => {
    let live = true;
    (async () => {
      try {
        const [tables, saved] = await Promise.all([
          backend.discoverTables(profileId),
          backend.captureDefinition(profileId),
        ]);
        if (!live) return;
        setChoices(
          tables.map((table) => {
            const bound = saved?.bindings.find((b) => b.schema === table.schema && b.table === table.table);
            return {
              table,
              selected: Boolean(bound),
              collection: bound?.collection ?? table.collection.name,
              mode: bound?.mode ?? "full",
              backfill: bound?.backfill ?? 0,
            };
          }),
        );
        setDiscovery({ status: "ready" });
      } catch (error) {
        if (live) setDiscovery({ status: "failed", error: error as BackendError });
      }
    })();
    return () => {
      live = false;
    };
  }, [profileId]);

  // The selected tables, as one string so the plan is asked for again only when they change:
  // `choices` changes with every keystroke in a name, and only the selection matters here.
  const selectedTables = JSON.stringify(
    choices.filter((c) => c.selected).map((c) => ({ schema: c.table.schema, table: c.table.table })),
  );
  useEffect(() => {
    const tables: TableRef[] = JSON.parse(selectedTables);
    if (tables.length === 0) {
      setPlan(null);
      return;
    }
    let live = true;
    backend.planPublication(profileId, tables, keyless).then(
      (p) => live && setPlan(p),
      () => live && setPlan(null),
    );
    return () => {
      live = false;
    };
  }, [profileId, selectedTables, keyless]);

  const change = (id: string, patch: Partial<Choice>) =>
    setChoices((previous) => previous.map((c) => (rowId(c.table) === id ? { ...c, ...patch } : c)));

  // Answers to earlier keystrokes can arrive after later ones: only the newest name's answer counts.
  const typed = useRef<Record<string, string>>({});
  const rename = (id: string, collection: string) => {
    change(id, { collection });
    typed.current[id] = collection;
    const current = () => typed.current[id] === collection;
    backend.checkCollectionName(collection.trim()).then(
      () => current() && setNameErrors(({ [id]: _gone, ...rest }) => rest),
      (e: BackendError) => current() && setNameErrors((errors) => ({ ...errors, [id]: e.message })),
    );
  };

  const shownChoices = useMemo(() => {
    const needle = search.trim().toLowerCase();
    if (!needle) return choices;
    return choices.filter(
      (c) => rowId(c.table).toLowerCase().includes(needle) || c.collection.toLowerCase().includes(needle),
    );
  }, [choices, search]);

  // Two selected tables may not share a collection.
  const duplicates = useMemo(() => {
    const seen = new Map<string, number>();
    choices.filter((c) => c.selected).forEach((c) => seen.set(c.collection.trim(), (seen.get(c.collection.trim()) ?? 0) + 1));
    return new Set([...seen].filter(([, n]) => n > 1).map(([name]) => name));
  }, [choices]);
  const problemOf = (c: Choice): string | null => {
    const id = rowId(c.table);
    if (nameErrors[id]) return nameErrors[id];
    if (c.selected && duplicates.has(c.collection.trim())) return "another selected table uses this collection name";
    return null;
  };

  const allShownSelected = shownChoices.length > 0 && shownChoices.every((c) => c.selected);
  const selectShown = (selected: boolean) => {
    const ids = new Set(shownChoices.map((c) => rowId(c.table)));
    setChoices((previous) => previous.map((c) => (ids.has(rowId(c.table)) ? { ...c, selected } : c)));
  };

  async function publish() {
    const bindings: Binding[] = choices
      .filter((c) => c.selected)
      .map((c) => ({
        schema: c.table.schema,
        table: c.table.table,
        collection: c.collection.trim(),
        mode: c.mode,
        backfill: c.backfill,
      }));
    // What will run is shown first; nothing runs before the confirmation.
    setPublishing({ status: "none" });
    const plan = await runCommand(() => backend.planSaveAndPublish(profileId, bindings, keyless));
    if (plan) setPublishing({ status: "planned", plan, bindings });
  }

  async function run(plan: PublishPlan, bindings: Binding[]) {
    const ran = await runCommand(() => backend.saveAndPublish(profileId, bindings, keyless));
    if (!ran) {
      setPublishing({ status: "none" });
      return;
    }
    setPublishing({ status: "published", statements: plan.publication.statements });
    // The backfill's progress and the capture's state are on the Capture tab.
    onStarted?.();
  }

  if (discovery.status === "loading") return <p data-testid="tables-loading">Discovering tables…</p>;
  if (discovery.status === "failed") return <ErrorNotice error={discovery.error} testId="discover-error" />;

  const selected = choices.filter((c) => c.selected).length;
  // A selected table that publishing would make refuse its writes must be decided first.
  const hazards = plan?.hazards ?? [];
  const undecided = hazards.some((h) => !h.refusedNow && !keyless.some((k) => k.schema === h.table.schema && k.table === h.table.table));
  const blocked = undecided || choices.some((c) => c.selected && problemOf(c) !== null);
  const planned = publishing.status === "planned" ? publishing : null;
  const planning = busy && !planned;
  return (
    <section className="panel" data-testid="tables-panel">
      <h2>Tables</h2>
      <p className="muted">
        Each table becomes a collection keyed by its primary key. Pick the tables to capture, name their collections,
        and choose whether their existing rows are backfilled.
      </p>
      <div className="row">
        <input
          type="search"
          aria-label="search tables"
          data-testid="tables-search"
          placeholder="Search tables and collections"
          value={search}
          onChange={(e) => setSearch(e.target.value)}
        />
        <span className="muted" data-testid="tables-count">
          {shownChoices.length} of {choices.length} tables · {selected} selected
        </span>
      </div>
      <div className="table-wide">
        <table className="tables">
          <thead>
            <tr>
              <th>
                <input
                  type="checkbox"
                  aria-label="select every table shown"
                  data-testid="select-all"
                  checked={allShownSelected}
                  onChange={(e) => selectShown(e.target.checked)}
                />
              </th>
              <th>Table</th>
              <th>Collection</th>
              <th>Key</th>
              <th>Rows</th>
              <th>Start with</th>
            </tr>
          </thead>
          <tbody>
            {shownChoices.map((c) => {
              const id = rowId(c.table);
              const problem = problemOf(c);
              return (
                <Fragment key={id}>
                  <tr data-testid={`table-${id}`}>
                    <td>
                      <input
                        type="checkbox"
                        aria-label={`capture ${id}`}
                        data-testid={`select-${id}`}
                        checked={c.selected}
                        onChange={(e) => change(id, { selected: e.target.checked })}
                      />
                    </td>
                    <td>
                      {id}
                      {c.table.partitioned && <span className="badge">partitioned</span>}
                      {!c.table.inPublication && (
                        <span className="badge" title="Save and publish adds it to the publication">
                          not published yet
                        </span>
                      )}
                    </td>
                    <td>
                      <input
                        aria-label={`collection name for ${id}`}
                        data-testid={`collection-${id}`}
                        value={c.collection}
                        aria-invalid={problem !== null}
                        onChange={(e) => rename(id, e.target.value)}
                      />
                      {problem && (
                        <p className="field-error" role="alert" data-testid={`collection-error-${id}`}>
                          {problem}
                        </p>
                      )}
                    </td>
                    <td>
                      {keyLabel(c.table)}
                      {c.table.keySource === "none" && (
                        <p className="note" data-testid={`keyless-note-${id}`}>
                          This table has no primary key or unique index over non-null columns, so its rows cannot be
                          told apart. It is captured as a change log: every insert, update and delete is its own
                          document, keyed by its position in the stream, and the collection's "latest rows" are that log
                          rather than the table's current state. PostgreSQL refuses updates and deletes on a published
                          table without a key unless its replica identity is FULL. Add a primary key to capture it as
                          rows.
                        </p>
                      )}
                    </td>
                    <td>{c.table.estimatedRows ?? "?"}</td>
                    <td>
                      <select
                        aria-label={`start ${id} with`}
                        data-testid={`mode-${id}`}
                        value={c.mode}
                        onChange={(e) => change(id, { mode: e.target.value as BindingMode })}
                      >
                        <option value="full">existing rows, then changes</option>
                        <option value="onlyChanges">only new changes</option>
                      </select>
                      <button
                        type="button"
                        className="link"
                        data-testid={`schema-${id}`}
                        aria-expanded={schemaOf === id}
                        onClick={() => setSchemaOf(schemaOf === id ? null : id)}
                      >
                        {schemaOf === id ? "hide schema" : "schema"}
                      </button>
                    </td>
                  </tr>
                  {/* The schema opens under the row that asked for it, not below the whole list. */}
                  {schemaOf === id && (
                    <tr data-testid={`schema-row-${id}`}>
                      <td colSpan={6}>
                        <pre className="schema" data-testid="collection-schema" ref={scrollIntoView}>
                          {JSON.stringify(c.table.collection.schema, null, 2)}
                        </pre>
                      </td>
                    </tr>
                  )}
                </Fragment>
              );
            })}
          </tbody>
        </table>
      </div>
      {hazards.length > 0 && (
        <div className="keyless-publish" data-testid="publish-keyless">
          <p>
            Before publishing: the table(s) below have no primary key or usable replica identity. Choose how each is
            published, or unselect it.
          </p>
          <KeylessChoices
            hazards={hazards}
            choices={keyless}
            publication={plan?.request.publication ?? ""}
            onChange={setKeyless}
            allowed={(h) => h.options.filter((o) => o !== "leaveOut")}
          />
          {hazards.map((h) => (
            <button
              key={`${h.table.schema}.${h.table.table}`}
              type="button"
              className="secondary"
              data-testid={`unselect-${h.table.schema}.${h.table.table}`}
              onClick={() => change(`${h.table.schema}.${h.table.table}`, { selected: false })}
            >
              Unselect {h.table.schema}.{h.table.table}
            </button>
          ))}
          {plan && !undecided && (
            <>
              <p>Save and publish will run:</p>
              <pre data-testid="publish-plan-sql">{plan.statements.join(";\n") || "(nothing)"}</pre>
            </>
          )}
        </div>
      )}
      <div className="actions">
        <button
          type="button"
          data-testid="publish"
          disabled={selected === 0 || blocked || busy || planned !== null}
          onClick={() => void publish()}
        >
          {planning ? "Planning…" : `Save and publish (${selected})`}
        </button>
      </div>
      {planned && (
        <div className="publish-plan" data-testid="publish-plan">
          <p>Save and publish will, in order:</p>
          <ol>
            {planned.plan.steps.map((step) => (
              <li key={step} data-testid="publish-plan-step">
                {step}
              </li>
            ))}
          </ol>
          {planned.plan.publication.statements.length > 0 && (
            <pre data-testid="publish-plan-statements">{planned.plan.publication.statements.join(";\n")}</pre>
          )}
          <div className="actions">
            <button
              type="button"
              data-testid="publish-run"
              disabled={busy}
              onClick={() => void run(planned.plan, planned.bindings)}
            >
              {busy ? "Publishing…" : planned.plan.running ? "Publish" : "Publish and start"}
            </button>
            <button
              type="button"
              className="secondary"
              data-testid="publish-cancel"
              disabled={busy}
              onClick={() => setPublishing({ status: "none" })}
            >
              Cancel
            </button>
          </div>
        </div>
      )}
      {error && <ErrorNotice error={error} testId="publish-error" place="form" />}
      {publishing.status === "published" && (
        <div className="ok" data-testid="published">
          Saved. {publishing.statements.length === 0 ? "The publication already had every table." : "Ran:"}
          {publishing.statements.map((s) => (
            <pre key={s} data-testid="published-sql">
              {s}
            </pre>
          ))}
        </div>
      )}
    </section>
  );
}

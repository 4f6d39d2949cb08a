import { useCallback, useEffect, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, CollectionInfo, CollectionView, Page } from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";

const LIMIT = 200;

/** A cell: NULL and absent (unchanged TOAST) values are shown apart from each other and from text. */
function Cell({ doc, column }: { doc: Record<string, unknown>; column: string }) {
  if (!(column in doc)) return <span className="muted" title="not in this document (e.g. an unchanged TOAST value)">—</span>;
  const value = doc[column];
  if (value === null) return <span className="null">NULL</span>;
  return <>{typeof value === "object" ? JSON.stringify(value) : String(value)}</>;
}

/**
 * The profile's collections with their counts, and a preview of one: current rows (reduced by key) or
 * the change log, live — new changes are pushed by the engine as the capture stores them.
 */
export function CollectionsPanel({ profileId }: { profileId: string }) {
  const [list, setList] = useState<CollectionInfo[] | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [view, setView] = useState<CollectionView>("rows");
  const [page, setPage] = useState<Page | null>(null);
  const [open, setOpen] = useState<Record<string, unknown> | null>(null);
  const [error, setError] = useState<BackendError | null>(null);

  const loadList = useCallback(async () => {
    try {
      const found = await backend.collections(profileId);
      setList(found);
      setSelected((current) => current ?? found[0]?.name ?? null);
    } catch (e) {
      setError(e as BackendError);
    }
  }, [profileId]);

  useEffect(() => {
    void loadList();
  }, [loadList]);

  useEffect(() => {
    if (!selected) return;
    let live = true;
    let stopTail: (() => void) | null = null;
    (async () => {
      try {
        const first = await backend.collectionPage(profileId, selected, view, null, LIMIT);
        if (!live) return;
        setPage(first);
        setError(null);
        stopTail = backend.tailCollection(profileId, selected, first.lastSeq, (entries) => {
          if (!live) return;
          if (view === "changes") {
            setPage((p) => (p ? { ...p, documents: [...p.documents, ...entries.map((e) => e.doc)].slice(-LIMIT) } : p));
          } else {
            backend.collectionPage(profileId, selected, "rows", null, LIMIT).then((next) => live && setPage(next));
          }
          void loadList();
        });
      } catch (e) {
        if (live) setError(e as BackendError);
      }
    })();
    return () => {
      live = false;
      stopTail?.();
    };
  }, [profileId, selected, view, loadList]);

  const columns = page ? page.collection.columns.map((c) => c.name) : [];
  return (
    <section className="panel" data-testid="collections-panel">
      <h2>Collections</h2>
      {error && <ErrorNotice error={error} testId="collections-error" />}
      {list === null && !error && <p>Loading…</p>}
      {list !== null && list.length === 0 && (
        <p data-testid="collections-empty">No collections yet: publish tables and start the capture.</p>
      )}
      {list !== null && list.length > 0 && (
        <ul className="collections">
          {list.map((c) => (
            <li key={c.name}>
              <button
                type="button"
                className={c.name === selected ? "tab current" : "tab"}
                data-testid={`collection-${c.name}`}
                onClick={() => setSelected(c.name)}
              >
                {c.name} <span className="muted" data-testid={`collection-${c.name}-counts`}>{c.rows} rows · {c.changes} changes</span>
              </button>
            </li>
          ))}
        </ul>
      )}
      {selected && page && (
        <>
          <div className="row" role="tablist">
            {(["rows", "changes"] as CollectionView[]).map((v) => (
              <button
                key={v}
                type="button"
                role="tab"
                aria-selected={view === v}
                className={view === v ? "tab current" : "tab"}
                data-testid={`view-${v}`}
                onClick={() => setView(v)}
              >
                {v === "rows" ? "Rows" : "Changes"}
              </button>
            ))}
            <span className="muted">Live: new changes appear as they are stored.</span>
          </div>
          <table className="tables" data-testid="preview-table">
            <thead>
              <tr>
                {view === "changes" && <th>op</th>}
                {columns.map((c) => (
                  <th key={c}>{c}</th>
                ))}
              </tr>
            </thead>
            <tbody>
              {page.documents.map((doc, i) => {
                const meta = (doc._meta ?? {}) as { op?: string };
                return (
                  <tr key={i} data-testid="preview-row" data-op={meta.op} onClick={() => setOpen(doc)}>
                    {view === "changes" && <td>{meta.op}</td>}
                    {columns.map((c) => (
                      <td key={c}>
                        <Cell doc={doc} column={c} />
                      </td>
                    ))}
                  </tr>
                );
              })}
            </tbody>
          </table>
          {open && (
            <>
              <h3>Document</h3>
              <pre className="schema" data-testid="preview-json">
                {JSON.stringify(open, null, 2)}
              </pre>
            </>
          )}
        </>
      )}
    </section>
  );
}

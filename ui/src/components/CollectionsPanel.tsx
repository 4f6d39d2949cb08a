import { type ColumnDef, flexRender, getCoreRowModel, useReactTable } from "@tanstack/react-table";
import { observeElementRect, useVirtualizer } from "@tanstack/react-virtual";
import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import * as backend from "../lib/backend";
import { scrollIntoView } from "../lib/reveal";
import type {
  BackendError,
  CollectionInfo,
  CollectionSpec,
  CollectionView,
  DocFilter,
  Exported,
  ExportFormat,
  PageRequest,
} from "../lib/types";
import { ErrorNotice } from "./ErrorNotice";
import { LockedNotice } from "./LockedNotice";

/** Documents per page read from the engine. */
const PAGE = 500;
/** The change log keeps at most this many of the newest entries on screen. */
const KEEP_CHANGES = 5000;
/**
 * Height of one table row. Rows have this fixed height (cells do not wrap): measuring rows instead
 * would let column widths, which depend on the rows on screen, change the heights and so the rows on
 * screen, a loop that never settles.
 */
const ROW_HEIGHT = 34;
/** The height assumed until the table's container is laid out. */
const FIRST_SCREEN = 480;

type Doc = Record<string, unknown>;

/**
 * The table's data while the first page loads. One array for good: TanStack Table rebuilds its row
 * model when `data` changes identity, then queues a page-index reset that sets state, which renders
 * again — with a fresh `[]` each render that never ended and froze the window.
 */
const NO_DOCS: Doc[] = [];

/** A field's text, by the engine's filter rule: strings as themselves, everything else as JSON. */
function fieldText(value: unknown): string {
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Whether a pushed document matches the filter (the same rule the engine applies to stored ones). */
export function matches(filter: DocFilter | null, doc: Doc): boolean {
  if (!filter) return true;
  if (!(filter.field in doc)) return false;
  const text = fieldText(doc[filter.field]);
  return filter.contains ? text.includes(filter.value) : text === filter.value;
}

/** A cell: NULL and absent (unchanged TOAST) values are shown apart from each other and from text. */
function Cell({ doc, column }: { doc: Doc; column: string }) {
  if (!(column in doc)) return <span className="muted" title="not in this document (e.g. an unchanged TOAST value)">—</span>;
  const value = doc[column];
  if (value === null) return <span className="null">NULL</span>;
  return <>{typeof value === "object" ? JSON.stringify(value) : String(value)}</>;
}

function columnsOf(spec: CollectionSpec | null, view: CollectionView): ColumnDef<Doc>[] {
  if (!spec) return [];
  const columns: ColumnDef<Doc>[] = spec.columns.map((c) => ({
    id: c.name,
    header: () =>
      spec.key.includes(c.name) ? (
        <span title="part of the collection's key">
          {c.name} <span className="badge">key</span>
        </span>
      ) : (
        c.name
      ),
    cell: ({ row }) => <Cell doc={row.original} column={c.name} />,
  }));
  if (view === "changes") {
    columns.unshift({ id: "_op", header: "op", cell: ({ row }) => String((row.original._meta as { op?: string })?.op ?? "") });
  }
  return columns;
}

/**
 * The profile's collections with their counts, and a preview of one: current rows (reduced by key,
 * scrolled page by page) or the change log, live — new changes are pushed by the engine as the capture
 * stores them — with a field filter, a JSON view of one document, and export of the whole view.
 */
export function CollectionsPanel({ profileId }: { profileId: string }) {
  const [list, setList] = useState<CollectionInfo[] | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [view, setView] = useState<CollectionView>("rows");
  const [spec, setSpec] = useState<CollectionSpec | null>(null);
  const [docs, setDocs] = useState<Doc[] | null>(null);
  const [cursor, setCursor] = useState<{ lastKey: string | null; hasMore: boolean }>({ lastKey: null, hasMore: false });
  const [loadingMore, setLoadingMore] = useState(false);
  const [filter, setFilter] = useState<DocFilter | null>(null);
  const [draft, setDraft] = useState<DocFilter>({ field: "", value: "", contains: false });
  const [open, setOpen] = useState<Doc | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [exported, setExported] = useState<Exported | null>(null);
  const [exporting, setExporting] = useState<ExportFormat | null>(null);
  const scrollRef = useRef<HTMLDivElement>(null);
  // How many rows are on screen, for the tail's re-read (read outside React's render).
  const loaded = useRef(0);
  loaded.current = docs?.length ?? 0;

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

  // The first page, then the live tail, for the selected collection, view and filter.
  useEffect(() => {
    if (!selected) return;
    let live = true;
    let stopTail: (() => void) | null = null;
    const first: PageRequest = { view, after: null, afterKey: null, limit: PAGE, filter };
    setDocs(null);
    setOpen(null);
    (async () => {
      try {
        const page = await backend.collectionPage(profileId, selected, first);
        if (!live) return;
        setSpec(page.collection);
        setDocs(page.documents);
        setCursor({ lastKey: page.lastKey, hasMore: view === "rows" && page.hasMore });
        setError(null);
        stopTail = backend.tailCollection(profileId, selected, page.lastSeq, (entries) => {
          if (!live) return;
          if (view === "changes") {
            const arrived = entries.map((e) => e.doc).filter((d) => matches(filter, d));
            if (arrived.length > 0) setDocs((d) => [...(d ?? []), ...arrived].slice(-KEEP_CHANGES));
          } else {
            // A change can move any row: read the rows on screen again, in one page.
            const limit = Math.min(10_000, Math.max(PAGE, loaded.current));
            backend.collectionPage(profileId, selected, { ...first, limit }).then((next) => {
              if (!live) return;
              setDocs(next.documents);
              setCursor({ lastKey: next.lastKey, hasMore: next.hasMore });
            });
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
  }, [profileId, selected, view, filter, loadList]);

  const loadMore = useCallback(async () => {
    if (!selected || loadingMore || !cursor.hasMore) return;
    setLoadingMore(true);
    try {
      const page = await backend.collectionPage(profileId, selected, {
        view: "rows",
        after: null,
        afterKey: cursor.lastKey,
        limit: PAGE,
        filter,
      });
      setDocs((d) => [...(d ?? []), ...page.documents]);
      setCursor({ lastKey: page.lastKey, hasMore: page.hasMore });
    } catch (e) {
      setError(e as BackendError);
    } finally {
      setLoadingMore(false);
    }
  }, [profileId, selected, cursor, filter, loadingMore]);

  const columns = useMemo(() => columnsOf(spec, view), [spec, view]);
  const table = useReactTable({ data: docs ?? NO_DOCS, columns, getCoreRowModel: getCoreRowModel() });
  const rows = table.getRowModel().rows;
  const virtualizer = useVirtualizer({
    count: rows.length,
    getScrollElement: () => scrollRef.current,
    estimateSize: () => ROW_HEIGHT,
    overscan: 12,
    // Before the first layout the container measures 0 px high: render a first screenful meanwhile.
    observeElementRect: (instance, cb) =>
      observeElementRect(instance, (rect) => cb(rect.height > 0 ? rect : { width: rect.width, height: FIRST_SCREEN })),
  });
  const items = virtualizer.getVirtualItems();
  const lastIndex = items.at(-1)?.index ?? -1;

  // The change log follows its tail, like `tail -f`, until the reader scrolls up; scrolling back to
  // the end follows again.
  const following = useRef(true);
  useEffect(() => {
    following.current = true;
  }, [selected, view, filter]);
  useEffect(() => {
    if (view === "changes" && following.current && rows.length > 0) {
      virtualizer.scrollToIndex(rows.length - 1, { align: "end" });
    }
  }, [view, rows.length, virtualizer]);
  const onScroll = (e: React.UIEvent<HTMLDivElement>) => {
    const el = e.currentTarget;
    following.current = el.scrollTop + el.clientHeight >= el.scrollHeight - 2 * ROW_HEIGHT;
  };

  // Scrolling near the end of the rows loaded so far reads the next page.
  useEffect(() => {
    if (view === "rows" && cursor.hasMore && lastIndex >= rows.length - 20) void loadMore();
  }, [view, cursor.hasMore, lastIndex, rows.length, loadMore]);

  async function runExport(format: ExportFormat) {
    if (!selected) return;
    setExporting(format);
    setExported(null);
    try {
      setExported(await backend.exportCollection(profileId, selected, view, filter, format));
    } catch (e) {
      setError(e as BackendError);
    } finally {
      setExporting(null);
    }
  }

  const top = items[0]?.start ?? 0;
  const bottom = virtualizer.getTotalSize() - (items.at(-1)?.end ?? 0);
  const width = columns.length;
  return (
    <section className="panel" data-testid="collections-panel">
      <h2>Collections</h2>
      {error &&
        (error.kind === "Locked" ? (
          <LockedNotice profileId={profileId} error={error} testId="collections-error" />
        ) : (
          <ErrorNotice error={error} testId="collections-error" />
        ))}
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
                {c.name}{" "}
                <span className="muted" data-testid={`collection-${c.name}-counts`}>
                  {c.rows} rows · {c.changes} changes
                </span>
                {c.lastChangeMs !== null && (
                  <span className="muted" data-testid={`collection-${c.name}-last`}>
                    {" "}
                    · last change {new Date(c.lastChangeMs).toLocaleTimeString()}
                  </span>
                )}
              </button>
            </li>
          ))}
        </ul>
      )}
      {selected && spec && (
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
            <span className="muted" data-testid="preview-count">
              {rows.length.toLocaleString()} {view === "rows" ? "rows" : "changes"} loaded
              {view === "rows" && cursor.hasMore ? (loadingMore ? " · loading more…" : " · scroll for more") : ""}
            </span>
            <span className="muted">Live: new changes appear as they are stored.</span>
          </div>
          <form
            className="row filter"
            data-testid="filter-form"
            onSubmit={(e) => {
              e.preventDefault();
              setFilter(draft.field ? { ...draft } : null);
            }}
          >
            <label className="inline">
              Filter
              <select
                data-testid="filter-field"
                value={draft.field}
                onChange={(e) => setDraft((d) => ({ ...d, field: e.target.value }))}
              >
                <option value="">field…</option>
                {spec.columns.map((c) => (
                  <option key={c.name} value={c.name}>
                    {c.name}
                    {spec.key.includes(c.name) ? " (key)" : ""}
                  </option>
                ))}
              </select>
            </label>
            <select
              aria-label="match"
              data-testid="filter-match"
              value={draft.contains ? "contains" : "equals"}
              onChange={(e) => setDraft((d) => ({ ...d, contains: e.target.value === "contains" }))}
            >
              <option value="equals">equals</option>
              <option value="contains">contains</option>
            </select>
            <input
              aria-label="value"
              data-testid="filter-value"
              value={draft.value}
              placeholder="value (null, true, 42, text)"
              onChange={(e) => setDraft((d) => ({ ...d, value: e.target.value }))}
            />
            <button type="submit" data-testid="filter-apply" disabled={!draft.field}>
              Apply
            </button>
            {filter && (
              <button
                type="button"
                className="secondary"
                data-testid="filter-clear"
                onClick={() => {
                  setFilter(null);
                  setDraft({ field: "", value: "", contains: false });
                }}
              >
                Clear
              </button>
            )}
            <span className="spacer" />
            <button type="button" className="secondary" data-testid="export-jsonl" disabled={exporting !== null} onClick={() => void runExport("jsonl")}>
              {exporting === "jsonl" ? "Exporting…" : "Export JSON Lines"}
            </button>
            <button type="button" className="secondary" data-testid="export-csv" disabled={exporting !== null} onClick={() => void runExport("csv")}>
              {exporting === "csv" ? "Exporting…" : "Export CSV"}
            </button>
          </form>
          {exported && (
            <p className="ok" data-testid="export-done">
              {exported.documents.toLocaleString()} documents written to <code data-testid="export-path">{exported.path}</code>
            </p>
          )}
          {docs === null ? (
            <p className="muted">Loading…</p>
          ) : docs.length === 0 ? (
            <p className="muted" data-testid="preview-empty">
              {filter ? "No document matches the filter." : "Nothing here yet."}
            </p>
          ) : null}
          {/* A clicked row's document opens beside the table (under it in a narrow window), not below the list. */}
          <div className={open ? "preview-with-doc" : undefined}>
            <div className="table-scroll" ref={scrollRef} data-testid="preview-scroll" onScroll={onScroll}>
              <table className="tables" data-testid="preview-table" aria-rowcount={rows.length}>
                <thead>
                  {table.getHeaderGroups().map((group) => (
                    <tr key={group.id}>
                      {group.headers.map((header) => (
                        <th key={header.id}>{flexRender(header.column.columnDef.header, header.getContext())}</th>
                      ))}
                    </tr>
                  ))}
                </thead>
                <tbody>
                  {top > 0 && (
                    <tr aria-hidden="true">
                      <td colSpan={width} style={{ height: top, padding: 0, border: 0 }} />
                    </tr>
                  )}
                  {items.map((item) => {
                    const row = rows[item.index];
                    const meta = (row.original._meta ?? {}) as { op?: string };
                    return (
                      <tr
                        key={row.id}
                        data-index={item.index}
                        data-testid="preview-row"
                        data-op={meta.op}
                        tabIndex={0}
                        onClick={() => setOpen(row.original)}
                        onKeyDown={(e) => e.key === "Enter" && setOpen(row.original)}
                      >
                        {row.getVisibleCells().map((cell) => (
                          <td key={cell.id}>{flexRender(cell.column.columnDef.cell, cell.getContext())}</td>
                        ))}
                      </tr>
                    );
                  })}
                  {bottom > 0 && (
                    <tr aria-hidden="true">
                      <td colSpan={width} style={{ height: bottom, padding: 0, border: 0 }} />
                    </tr>
                  )}
                </tbody>
              </table>
            </div>
            {open && (
              <aside className="document" aria-label="Document" data-testid="preview-document" ref={scrollIntoView}>
                <div className="card-head">
                  <h3>Document</h3>
                  <button type="button" className="link" data-testid="preview-json-close" onClick={() => setOpen(null)}>
                    Close
                  </button>
                </div>
                <pre className="schema" data-testid="preview-json">
                  {JSON.stringify(open, null, 2)}
                </pre>
              </aside>
            )}
          </div>
        </>
      )}
    </section>
  );
}

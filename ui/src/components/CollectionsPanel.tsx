import { type ColumnDef, flexRender, getCoreRowModel, useReactTable } from "@tanstack/react-table";
import { observeElementRect, useVirtualizer } from "@tanstack/react-virtual";
import { useCallback, useEffect, useLayoutEffect, useMemo, useRef, useState } from "react";

import * as backend from "../lib/backend";
import type {
  BackendError,
  ChangeInfo,
  CollectionInfo,
  CollectionSpec,
  CollectionView,
  Exported,
  ExportFormat,
  PageRequest,
  Sort,
} from "../lib/types";
import { filterPosition } from "./ConsumerForm";
import { DocumentPanel } from "./DocumentPanel";
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
/** A scroll this soon (ms) after the reader's wheel, touch, key or pointer is the reader's own. */
const READER_SCROLL_MS = 1000;

type Doc = Record<string, unknown>;

/** A row of the table: a document, and for the change log what its change was (from the engine). */
type Entry = { doc: Doc; info: ChangeInfo | null };

/**
 * The table's data while the first page loads. One array for good: TanStack Table rebuilds its row
 * model when `data` changes identity, then queues a page-index reset that sets state, which renders
 * again — with a fresh `[]` each render that never ended and froze the window.
 */
const NO_ENTRIES: Entry[] = [];

/** The change log's own columns, ahead of the collection's; their sort keys come from the engine's `ChangeInfo`. */
const CHANGE_COLUMNS: { id: string; header: string; title: string }[] = [
  { id: "_op", header: "op", title: "c insert (or backfilled row), u update, d delete, t truncate" },
  { id: "_committed", header: "committed", title: "when the transaction committed at the source (a backfilled row: when it was read)" },
  { id: "_lsn", header: "LSN", title: "the commit's position in PostgreSQL's write-ahead log" },
  { id: "_xid", header: "xid", title: "the source transaction's id" },
];

/** A cell: NULL and absent (unchanged TOAST) values are shown apart from each other and from text. */
function Cell({ doc, column }: { doc: Doc; column: string }) {
  if (!(column in doc)) return <span className="muted" title="not in this document (e.g. an unchanged TOAST value)">—</span>;
  const value = doc[column];
  if (value === null) return <span className="null">NULL</span>;
  return <>{typeof value === "object" ? JSON.stringify(value) : String(value)}</>;
}

/** The change log's own cells. */
function changeCell(id: string, info: ChangeInfo | null) {
  if (!info) return null;
  switch (id) {
    case "_op":
      return info.op;
    case "_committed":
      return info.committedMs === null ? "" : new Date(info.committedMs).toLocaleTimeString();
    case "_lsn":
      return info.lsn ?? "";
    default:
      return info.snapshot ? <span className="muted">backfill</span> : (info.xid ?? "");
  }
}

/** A loaded entry's sort value for a column: the engine's numbers for the change columns, else the document's. */
function sortValue(entry: Entry, column: string, numeric: boolean): number | string | null {
  const info = entry.info;
  switch (column) {
    // The log's order is the commit order: the LSN column sorts by it.
    case "_lsn":
      return info?.seq ?? null;
    case "_committed":
      return info?.committedMs ?? null;
    case "_xid":
      return info?.xid ?? null;
    case "_op":
      return info?.op ?? null;
  }
  const value = entry.doc[column];
  if (value === null || value === undefined) return null;
  if (typeof value === "number") return value;
  if (typeof value === "string") return numeric && value.trim() !== "" && !Number.isNaN(Number(value)) ? Number(value) : value;
  return JSON.stringify(value);
}

/** The loaded change-log entries in a column's order (NULL last ascending, first descending, as PostgreSQL). */
export function sortEntries(entries: Entry[], sort: Sort, numeric: boolean): Entry[] {
  const keyed = entries.map((e, i) => ({ e, i, v: sortValue(e, sort.column, numeric) }));
  keyed.sort((a, b) => {
    let c: number;
    if (a.v === null || b.v === null) c = a.v === b.v ? 0 : a.v === null ? 1 : -1;
    else if (typeof a.v === "number" && typeof b.v === "number") c = a.v - b.v;
    else c = String(a.v) < String(b.v) ? -1 : String(a.v) > String(b.v) ? 1 : 0;
    if (sort.descending) c = -c;
    return c !== 0 ? c : a.i - b.i;
  });
  return keyed.map((k) => k.e);
}

/** A row's identity across re-reads: its key's values for rows, its log position for changes. */
function identity(entry: Entry, spec: CollectionSpec | null): string {
  if (entry.info) return `#${entry.info.seq}`;
  return JSON.stringify((spec?.key ?? []).map((k) => entry.doc[k] ?? null));
}

function columnsOf(
  spec: CollectionSpec | null,
  view: CollectionView,
  sort: Sort | null,
  onSort: (column: string) => void,
): ColumnDef<Entry>[] {
  if (!spec) return [];
  const header = (id: string, label: React.ReactNode, title?: string) => () => (
    <button
      type="button"
      className="sort"
      title={title ? `${title}. Click to sort.` : "Click to sort"}
      data-testid={`sort-${id}`}
      onClick={() => onSort(id)}
    >
      {label}
      {sort?.column === id ? (sort.descending ? " ▼" : " ▲") : ""}
    </button>
  );
  const columns: ColumnDef<Entry>[] = spec.columns.map((c) => ({
    id: c.name,
    header: header(
      c.name,
      spec.key.includes(c.name) ? (
        <span title="part of the collection's key">
          {c.name} <span className="badge">key</span>
        </span>
      ) : (
        c.name
      ),
    ),
    cell: ({ row }) => <Cell doc={row.original.doc} column={c.name} />,
  }));
  if (view === "changes") {
    columns.unshift(
      ...CHANGE_COLUMNS.map(
        (c): ColumnDef<Entry> => ({
          id: c.id,
          header: header(c.id, c.header, c.title),
          cell: ({ row }) => changeCell(c.id, row.original.info),
        }),
      ),
    );
  }
  return columns;
}

/**
 * The profile's collections with their counts, and a preview of one: current rows (reduced by key,
 * scrolled page by page, sortable by a column in the engine) or the change log with each change's
 * commit time, LSN and transaction, live — new changes are pushed by the engine as the capture stores
 * them — with a CEL filter evaluated in the engine, a clicked row's document (and an update's before
 * and after) beside the table, and export of the whole view.
 */
export function CollectionsPanel({ profileId }: { profileId: string }) {
  const [list, setList] = useState<CollectionInfo[] | null>(null);
  const [selected, setSelected] = useState<string | null>(null);
  const [view, setView] = useState<CollectionView>("rows");
  const [spec, setSpec] = useState<CollectionSpec | null>(null);
  const [entries, setEntries] = useState<Entry[] | null>(null);
  const [cursor, setCursor] = useState<{ lastKey: string | null; hasMore: boolean }>({ lastKey: null, hasMore: false });
  const [loadingMore, setLoadingMore] = useState(false);
  const [filter, setFilter] = useState<string | null>(null);
  const [draft, setDraft] = useState("");
  const [sort, setSort] = useState<Sort | null>(null);
  const [openId, setOpenId] = useState<string | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [filterError, setFilterError] = useState<BackendError | null>(null);
  const [exported, setExported] = useState<Exported | null>(null);
  const [exporting, setExporting] = useState<ExportFormat | null>(null);
  const [folderError, setFolderError] = useState<BackendError | null>(null);
  const scrollRef = useRef<HTMLDivElement>(null);
  // How many rows are on screen, for the tail's re-read (read outside React's render).
  const loaded = useRef(0);
  loaded.current = entries?.length ?? 0;
  // Rows are sorted in the engine; the change log's loaded entries are sorted here.
  const rowSort = view === "rows" ? sort : null;

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

  /** An engine error about the filter goes under the filter, at its position; anything else above. */
  const fail = useCallback((e: BackendError) => {
    if (e.kind === "InvalidInput" && e.message.startsWith("filter")) setFilterError(e);
    else setError(e);
  }, []);

  // The first page, then the live tail, for the selected collection, view, filter and sort.
  useEffect(() => {
    if (!selected) return;
    let live = true;
    let stopTail: (() => void) | null = null;
    const first: PageRequest = { view, after: null, afterKey: null, limit: PAGE, filter, sort: rowSort, offset: 0 };
    setEntries(null);
    (async () => {
      try {
        const page = await backend.collectionPage(profileId, selected, first);
        if (!live) return;
        setSpec(page.collection);
        setEntries(page.documents.map((doc, i) => ({ doc, info: page.changes[i] ?? null })));
        setCursor({ lastKey: page.lastKey, hasMore: view === "rows" && page.hasMore });
        setError(null);
        setFilterError(null);
        // The change log's tail is filtered in the engine; the rows view hears every change, since
        // one can make a row stop (or start) matching, and reads its rows again.
        stopTail = backend.tailCollection(profileId, selected, page.lastSeq, view === "changes" ? filter : null, (pushed) => {
          if (!live) return;
          if (view === "changes") {
            const arrived = pushed.map((e) => ({ doc: e.doc, info: e.info }));
            if (arrived.length > 0) setEntries((d) => [...(d ?? []), ...arrived].slice(-KEEP_CHANGES));
          } else {
            // A change can move any row: read the rows on screen again, in one page.
            const limit = Math.min(10_000, Math.max(PAGE, loaded.current));
            backend.collectionPage(profileId, selected, { ...first, limit }).then((next) => {
              if (!live) return;
              setEntries(next.documents.map((doc) => ({ doc, info: null })));
              setCursor({ lastKey: next.lastKey, hasMore: next.hasMore });
            });
          }
          void loadList();
        }, (e) => {
          if (live) fail(e);
        });
      } catch (e) {
        if (live) {
          setEntries([]);
          fail(e as BackendError);
        }
      }
    })();
    return () => {
      live = false;
      stopTail?.();
    };
  }, [profileId, selected, view, filter, rowSort, loadList, fail]);

  const loadMore = useCallback(async () => {
    if (!selected || loadingMore || !cursor.hasMore) return;
    setLoadingMore(true);
    try {
      const page = await backend.collectionPage(profileId, selected, {
        view: "rows",
        after: null,
        afterKey: rowSort ? null : cursor.lastKey,
        limit: PAGE,
        filter,
        sort: rowSort,
        offset: rowSort ? loaded.current : 0,
      });
      setEntries((d) => [...(d ?? []), ...page.documents.map((doc) => ({ doc, info: null }))]);
      setCursor({ lastKey: page.lastKey, hasMore: page.hasMore });
    } catch (e) {
      fail(e as BackendError);
    } finally {
      setLoadingMore(false);
    }
  }, [profileId, selected, cursor, filter, rowSort, loadingMore, fail]);

  const onSort = useCallback((column: string) => {
    setSort((s) => (s?.column !== column ? { column, descending: false } : s.descending ? null : { column, descending: true }));
  }, []);
  const columns = useMemo(() => columnsOf(spec, view, sort, onSort), [spec, view, sort, onSort]);
  const shownEntries = useMemo(() => {
    if (!entries || view !== "changes" || !sort) return entries;
    const numeric = spec?.columns.some((c) => c.name === sort.column && c.typeOid === 1700) ?? false;
    return sortEntries(entries, sort, numeric);
  }, [entries, view, sort, spec]);
  const table = useReactTable({ data: shownEntries ?? NO_ENTRIES, columns, getCoreRowModel: getCoreRowModel() });
  const rows = table.getRowModel().rows;
  const open = useMemo(
    () => (openId === null ? null : (entries?.find((e) => identity(e, spec) === openId) ?? null)),
    [openId, entries, spec],
  );
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

  // The change log follows its tail, like `tail -f`, until the reader scrolls up or sorts it; scrolling
  // back to the end follows again. The scroll is written to the element itself, after each commit:
  // the virtualizer's own scrolls (scrollToIndex, followOnAppend) were seen, in WebKitGTK, to never land
  // when rows kept arriving, leaving the view at its first row. Only the reader's own scrolling (wheel,
  // touch, keys, the scrollbar) stops the following, so no scroll of the virtualizer's can.
  const following = useRef(true);
  const readerScrolledAt = useRef(0);
  useEffect(() => {
    following.current = true;
  }, [selected, view, filter]);
  useLayoutEffect(() => {
    const el = scrollRef.current;
    if (el && view === "changes" && !sort && following.current && rows.length > 0) {
      el.scrollTop = el.scrollHeight;
    }
  }, [view, sort, rows.length]);
  const onReaderScroll = () => {
    readerScrolledAt.current = Date.now();
  };
  const onScroll = (e: React.UIEvent<HTMLDivElement>) => {
    const el = e.currentTarget;
    const atEnd = el.scrollTop + el.clientHeight >= el.scrollHeight - 2 * ROW_HEIGHT;
    if (atEnd) following.current = true;
    else if (Date.now() - readerScrolledAt.current < READER_SCROLL_MS) following.current = false;
  };

  // Scrolling near the end of the rows loaded so far reads the next page.
  useEffect(() => {
    if (view === "rows" && cursor.hasMore && lastIndex >= rows.length - 20) void loadMore();
  }, [view, cursor.hasMore, lastIndex, rows.length, loadMore]);

  async function runExport(format: ExportFormat) {
    if (!selected) return;
    setExporting(format);
    setExported(null);
    setFolderError(null);
    try {
      setExported(await backend.exportCollection(profileId, selected, view, filter, format));
    } catch (e) {
      fail(e as BackendError);
    } finally {
      setExporting(null);
    }
  }

  async function openFolder() {
    setFolderError(null);
    try {
      await backend.openExportFolder();
    } catch (e) {
      setFolderError(e as BackendError);
    }
  }

  const at = filterError ? filterPosition(filterError.message) : null;
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
                onClick={() => {
                  setSelected(c.name);
                  setSort(null);
                  setOpenId(null);
                }}
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
                onClick={() => {
                  setView(v);
                  setSort(null);
                  setOpenId(null);
                }}
              >
                {v === "rows" ? "Rows" : "Changes"}
              </button>
            ))}
            <span className="muted" data-testid="preview-count">
              {rows.length.toLocaleString()} {view === "rows" ? "rows" : "changes"} loaded
              {view === "rows" && cursor.hasMore ? (loadingMore ? " · loading more…" : " · scroll for more") : ""}
            </span>
            {sort && (
              <span className="muted" data-testid="preview-sorted">
                {view === "rows"
                  ? `Sorted by ${sort.column} in the engine, over every row.`
                  : `The ${rows.length.toLocaleString()} changes loaded, sorted by ${CHANGE_COLUMNS.find((c) => c.id === sort.column)?.header ?? sort.column}.`}
              </span>
            )}
            <span className="muted">Live: new changes appear as they are stored.</span>
          </div>
          <form
            className="filter"
            data-testid="filter-form"
            onSubmit={(e) => {
              e.preventDefault();
              setFilterError(null);
              setFilter(draft.trim() ? draft : null);
            }}
          >
            <div className="row">
              <label className="inline grow">
                Filter
                <input
                  className={filterError ? "invalid mono" : "mono"}
                  data-testid="filter-expression"
                  aria-invalid={filterError !== null}
                  aria-describedby={filterError ? "filter-problem" : undefined}
                  value={draft}
                  spellCheck={false}
                  placeholder={'CEL, as in consumers: record.status == "shipped" && record.total > 100'}
                  onChange={(e) => setDraft(e.target.value)}
                />
              </label>
              <button type="submit" data-testid="filter-apply">
                Apply
              </button>
              {(filter || draft) && (
                <button
                  type="button"
                  className="secondary"
                  data-testid="filter-clear"
                  onClick={() => {
                    setFilter(null);
                    setDraft("");
                    setFilterError(null);
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
            </div>
            {filterError && (
              <div className="field-error" role="alert" id="filter-problem" data-testid="filter-problem">
                {at && (
                  <pre className="caret" aria-hidden="true" data-testid="filter-caret">
                    {(draft.split("\n")[at.line - 1] ?? "") + "\n" + " ".repeat(Math.max(0, at.column - 1)) + "^"}
                  </pre>
                )}
                {filterError.message.replace(/^filter: /, "")}
              </div>
            )}
            <p className="muted hint">
              Variables: <code>record</code> (the row), <code>changes</code> (an update&apos;s previous values),{" "}
              <code>action</code> (insert, update, delete, read), <code>metadata</code>. Evaluated in the engine, also on
              the live change log; a number is not text: <code>record.id == 3</code>, not <code>&quot;3&quot;</code>.
            </p>
          </form>
          {exported && (
            <p className="ok" data-testid="export-done">
              {exported.documents.toLocaleString()} documents written to <code data-testid="export-path">{exported.path}</code>{" "}
              <button type="button" className="link" data-testid="export-open-folder" onClick={() => void openFolder()}>
                Open folder
              </button>
            </p>
          )}
          {folderError && <ErrorNotice error={folderError} testId="export-folder-error" />}
          {entries === null ? (
            <p className="muted">Loading…</p>
          ) : entries.length === 0 && !filterError ? (
            <p className="muted" data-testid="preview-empty">
              {filter ? "No document matches the filter." : "Nothing here yet."}
            </p>
          ) : null}
          {/* A clicked row's document opens beside the table (under it in a narrow window), not below the list. */}
          <div className={open ? "preview-with-doc" : undefined}>
            <div
              className="table-scroll"
              ref={scrollRef}
              data-testid="preview-scroll"
              onScroll={onScroll}
              onWheel={onReaderScroll}
              onTouchMove={onReaderScroll}
              onPointerDown={onReaderScroll}
              onKeyDown={onReaderScroll}
            >
              <table className="tables" data-testid="preview-table" aria-rowcount={rows.length}>
                <thead>
                  {table.getHeaderGroups().map((group) => (
                    <tr key={group.id}>
                      {group.headers.map((header) => (
                        <th
                          key={header.id}
                          aria-sort={sort?.column === header.id ? (sort.descending ? "descending" : "ascending") : undefined}
                        >
                          {/* Called, not rendered as a component: a new header function each sort would
                              remount the button under the pointer (and a WebDriver click meets a stale node). */}
                          {typeof header.column.columnDef.header === "function"
                            ? header.column.columnDef.header(header.getContext())
                            : header.column.columnDef.header}
                        </th>
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
                    const id = identity(row.original, spec);
                    const chosen = id === openId;
                    return (
                      <tr
                        key={row.id}
                        data-index={item.index}
                        data-testid="preview-row"
                        data-op={row.original.info?.op ?? (row.original.doc._meta as { op?: string } | undefined)?.op}
                        className={chosen ? "selected" : undefined}
                        aria-selected={chosen}
                        tabIndex={0}
                        onClick={() => setOpenId(id)}
                        onKeyDown={(e) => e.key === "Enter" && setOpenId(id)}
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
            {open && <DocumentPanel doc={open.doc} info={open.info} onClose={() => setOpenId(null)} />}
          </div>
        </>
      )}
    </section>
  );
}

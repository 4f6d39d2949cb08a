import { type ColumnDef, flexRender, getCoreRowModel, useReactTable } from "@tanstack/react-table";
import { observeElementRect, useVirtualizer } from "@tanstack/react-virtual";
import { useEffect, useLayoutEffect, useMemo, useRef } from "react";

import type { ChangeInfo, CollectionSpec, CollectionView, Sort } from "../lib/types";

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
export type Entry = { doc: Doc; info: ChangeInfo | null };

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
export function identity(entry: Entry, spec: CollectionSpec | null): string {
  if (entry.info) return `#${entry.info.seq}`;
  return JSON.stringify((spec?.key ?? []).map((k) => entry.doc[k] ?? null));
}

function columnsOf(
  spec: CollectionSpec,
  view: CollectionView,
  sort: Sort | null,
  onSort: (column: string) => void,
): ColumnDef<Entry>[] {
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

/** A column's name as its header says it: the change log's own columns by their short header. */
export const columnLabel = (column: string) => CHANGE_COLUMNS.find((c) => c.id === column)?.header ?? column;

interface Props {
  /** The collection shown, with its view and filter: each new one follows the change log's tail again. */
  collection: string;
  spec: CollectionSpec;
  view: CollectionView;
  filter: string | null;
  /** The entries read so far; null while the first page loads. */
  entries: Entry[] | null;
  sort: Sort | null;
  onSort: (column: string) => void;
  /** The identity of the row whose document is open. */
  openId: string | null;
  onOpen: (id: string) => void;
  /** Whether the rows view has more pages to read. */
  hasMore: boolean;
  /** Reads the next page of rows. */
  onNearEnd: () => void;
}

/**
 * A collection's rows or change log as a table, a screenful of rows at a time, sorted by a clicked
 * column (rows in the engine, the change log's loaded entries here); a clicked row opens its document.
 */
export function CollectionTable({
  collection,
  spec,
  view,
  filter,
  entries,
  sort,
  onSort,
  openId,
  onOpen,
  hasMore,
  onNearEnd,
}: Props) {
  const scrollRef = useRef<HTMLDivElement>(null);
  const columns = useMemo(() => columnsOf(spec, view, sort, onSort), [spec, view, sort, onSort]);
  const shownEntries = useMemo(() => {
    if (!entries || view !== "changes" || !sort) return entries;
    const numeric = spec.columns.some((c) => c.name === sort.column && c.typeOid === 1700);
    return sortEntries(entries, sort, numeric);
  }, [entries, view, sort, spec]);
  const table = useReactTable({ data: shownEntries ?? NO_ENTRIES, columns, getCoreRowModel: getCoreRowModel() });
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

  // The change log follows its tail, like `tail -f`, until the reader scrolls up or sorts it; scrolling
  // back to the end follows again. The scroll is written to the element itself, after each commit:
  // the virtualizer's own scrolls (scrollToIndex, followOnAppend) were seen, in WebKitGTK, to never land
  // when rows kept arriving, leaving the view at its first row. Only the reader's own scrolling (wheel,
  // touch, keys, the scrollbar) stops the following, so no scroll of the virtualizer's can.
  const following = useRef(true);
  const readerScrolledAt = useRef(0);
  useEffect(() => {
    following.current = true;
  }, [collection, view, filter]);
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
    if (view === "rows" && hasMore && lastIndex >= rows.length - 20) onNearEnd();
  }, [view, hasMore, lastIndex, rows.length, onNearEnd]);

  const top = items[0]?.start ?? 0;
  const bottom = virtualizer.getTotalSize() - (items.at(-1)?.end ?? 0);
  const width = columns.length;
  return (
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
                onClick={() => onOpen(id)}
                onKeyDown={(e) => e.key === "Enter" && onOpen(id)}
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
  );
}

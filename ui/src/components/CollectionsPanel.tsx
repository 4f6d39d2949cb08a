import { useCallback, useEffect, useMemo, useRef, useState } from "react";

import * as backend from "../lib/backend";
import type {
  BackendError,
  CollectionInfo,
  CollectionSpec,
  CollectionView,
  Exported,
  ExportFormat,
  PageRequest,
  Sort,
} from "../lib/types";
import { CollectionFilter } from "./CollectionFilter";
import { CollectionList } from "./CollectionList";
import { CollectionTable, columnLabel, identity, type Entry } from "./CollectionTable";
import { DocumentPanel } from "./DocumentPanel";
import { ErrorNotice } from "./ErrorNotice";
import { LockedNotice } from "./LockedNotice";

/** Documents per page read from the engine. */
const PAGE = 500;
/** The change log keeps at most this many of the newest entries on screen. */
const KEEP_CHANGES = 5000;

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
  const [sort, setSort] = useState<Sort | null>(null);
  const [openId, setOpenId] = useState<string | null>(null);
  const [error, setError] = useState<BackendError | null>(null);
  const [filterError, setFilterError] = useState<BackendError | null>(null);
  const [exported, setExported] = useState<Exported | null>(null);
  const [exporting, setExporting] = useState<ExportFormat | null>(null);
  const [folderError, setFolderError] = useState<BackendError | null>(null);
  // How many rows are on screen, for the tail's re-read (read outside React's render).
  const loaded = useRef(0);
  loaded.current = entries?.length ?? 0;
  // Which first page the rows on screen belong to: a "load more" answer for an earlier collection,
  // view, filter or sort is dropped instead of appended to the new one's rows.
  const generation = useRef(0);
  // Rows are sorted in the engine; the change log's loaded entries are sorted by the table.
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
    generation.current += 1;
    setEntries(null);
    setCursor({ lastKey: null, hasMore: false });
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
    const asked = generation.current;
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
      if (asked !== generation.current) return;
      setEntries((d) => [...(d ?? []), ...page.documents.map((doc) => ({ doc, info: null }))]);
      setCursor({ lastKey: page.lastKey, hasMore: page.hasMore });
    } catch (e) {
      if (asked === generation.current) fail(e as BackendError);
    } finally {
      setLoadingMore(false);
    }
  }, [profileId, selected, cursor, filter, rowSort, loadingMore, fail]);

  const onSort = useCallback((column: string) => {
    setSort((s) => (s?.column !== column ? { column, descending: false } : s.descending ? null : { column, descending: true }));
  }, []);
  const open = useMemo(
    () => (openId === null ? null : (entries?.find((e) => identity(e, spec) === openId) ?? null)),
    [openId, entries, spec],
  );

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

  const count = entries?.length ?? 0;
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
        <CollectionList
          collections={list}
          selected={selected}
          onSelect={(name) => {
            setSelected(name);
            setSort(null);
            setOpenId(null);
          }}
        />
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
              {count.toLocaleString()} {view === "rows" ? "rows" : "changes"} loaded
              {view === "rows" && cursor.hasMore ? (loadingMore ? " · loading more…" : " · scroll for more") : ""}
            </span>
            {sort && (
              <span className="muted" data-testid="preview-sorted">
                {view === "rows"
                  ? `Sorted by ${sort.column} in the engine, over every row.`
                  : `The ${count.toLocaleString()} changes loaded, sorted by ${columnLabel(sort.column)}.`}
              </span>
            )}
            <span className="muted">Live: new changes appear as they are stored.</span>
          </div>
          <CollectionFilter
            filter={filter}
            error={filterError}
            onApply={(applied) => {
              setFilterError(null);
              setFilter(applied);
            }}
          >
            <button type="button" className="secondary" data-testid="export-jsonl" disabled={exporting !== null} onClick={() => void runExport("jsonl")}>
              {exporting === "jsonl" ? "Exporting…" : "Export JSON Lines"}
            </button>
            <button type="button" className="secondary" data-testid="export-csv" disabled={exporting !== null} onClick={() => void runExport("csv")}>
              {exporting === "csv" ? "Exporting…" : "Export CSV"}
            </button>
          </CollectionFilter>
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
            <CollectionTable
              collection={selected}
              spec={spec}
              view={view}
              filter={filter}
              entries={entries}
              sort={sort}
              onSort={onSort}
              openId={openId}
              onOpen={setOpenId}
              hasMore={cursor.hasMore}
              onNearEnd={loadMore}
            />
            {open && <DocumentPanel doc={open.doc} info={open.info} onClose={() => setOpenId(null)} />}
          </div>
        </>
      )}
    </section>
  );
}

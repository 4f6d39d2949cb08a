import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import type { CollectionView, Sort } from "../lib/types";
import { CollectionTable, columnLabel, identity, sortEntries, type Entry } from "./CollectionTable";
import { changeInfo as info, itemsSpec as spec } from "../test/fixtures";


function table(
  entries: Entry[] | null,
  { view = "rows", sort = null, openId = null, hasMore = false }: { view?: CollectionView; sort?: Sort | null; openId?: string | null; hasMore?: boolean } = {},
) {
  const handlers = { onSort: vi.fn(), onOpen: vi.fn(), onNearEnd: vi.fn() };
  render(
    <CollectionTable
      collection="public/items"
      spec={spec}
      view={view}
      filter={null}
      entries={entries}
      sort={sort}
      openId={openId}
      hasMore={hasMore}
      {...handlers}
    />,
  );
  return handlers;
}

const headers = () => [...screen.getByTestId("preview-table").querySelectorAll("th")].map((th) => th.textContent);

describe("CollectionTable", () => {
  it("heads the rows with the collection's columns, its key marked, and tells NULL from an absent value", () => {
    table([{ doc: { id: 1, name: null }, info: null }]);
    expect(headers()).toEqual(["id key", "name", "body"]);
    const [id, name, body] = [...screen.getByTestId("preview-row").querySelectorAll("td")].map((td) => td.textContent);
    expect([id, name, body]).toEqual(["1", "NULL", "—"]);
  });

  it("puts the change log's own columns first, from the engine's info, and a backfilled row's transaction as backfill", () => {
    table(
      [
        { doc: { _meta: { op: "c" }, id: 1 }, info: info(7, "c") },
        { doc: { _meta: { op: "r" }, id: 2 }, info: info(8, "r", { snapshot: true }) },
      ],
      { view: "changes" },
    );
    expect(headers().slice(0, 4)).toEqual(["op", "committed", "LSN", "xid"]);
    const [first, backfilled] = screen.getAllByTestId("preview-row");
    expect(first.getAttribute("data-op")).toBe("c");
    expect(first.textContent).toContain("0/16B3707");
    expect(first.textContent).toContain("707");
    expect(backfilled.textContent).toContain("backfill");
  });

  it("opens a clicked row (or Enter on it) by its identity, and marks the open one", async () => {
    const user = userEvent.setup();
    const entries = [
      { doc: { id: 1 }, info: null },
      { doc: { id: 2 }, info: null },
    ];
    const { onOpen } = table(entries, { openId: identity(entries[1], spec) });
    const rows = screen.getAllByTestId("preview-row");
    expect(rows.map((r) => r.getAttribute("aria-selected"))).toEqual(["false", "true"]);
    expect(rows[1].className).toBe("selected");
    await user.click(rows[0]);
    expect(onOpen).toHaveBeenLastCalledWith("[1]");
    rows[1].focus();
    await user.keyboard("{Enter}");
    expect(onOpen).toHaveBeenLastCalledWith("[2]");
  });

  it("sorts by a clicked header and shows the direction; the change log sorts its loaded entries here", async () => {
    const user = userEvent.setup();
    const { onSort } = table(
      [
        { doc: { id: 1 }, info: info(1, "c") },
        { doc: { id: 2 }, info: info(2, "u") },
      ],
      { view: "changes", sort: { column: "_lsn", descending: true } },
    );
    expect(screen.getAllByTestId("preview-row").map((r) => r.getAttribute("data-op"))).toEqual(["u", "c"]);
    expect(screen.getByTestId("sort-_lsn").parentElement!.getAttribute("aria-sort")).toBe("descending");
    expect(screen.getByTestId("sort-_lsn").textContent).toBe("LSN ▼");
    await user.click(screen.getByTestId("sort-name"));
    expect(onSort).toHaveBeenCalledWith("name");
  });

  it("asks for the next page of rows when the end of the loaded rows is in view, and only while there is more", () => {
    const rows = [{ doc: { id: 1 }, info: null }];
    expect(table(rows, { hasMore: true }).onNearEnd).toHaveBeenCalled();
    expect(table(rows, { hasMore: false }).onNearEnd).not.toHaveBeenCalled();
  });

  it("names the change log's own columns by their header", () => {
    expect(columnLabel("_committed")).toBe("committed");
    expect(columnLabel("name")).toBe("name");
  });
});

describe("sortEntries", () => {
  it("orders the loaded changes by a column, numbers as numbers, NULL last ascending and first descending", () => {
    const entries = [
      { doc: { total: "10.5" }, info: info(3, "u") },
      { doc: { total: null }, info: info(1, "c") },
      { doc: { total: "9" }, info: info(2, "c") },
    ];
    const totals = (s: { column: string; descending: boolean }, numeric: boolean) =>
      sortEntries(entries, s, numeric).map((e) => e.doc.total);
    expect(totals({ column: "total", descending: false }, true)).toEqual(["9", "10.5", null]);
    expect(totals({ column: "total", descending: true }, true)).toEqual([null, "10.5", "9"]);
    expect(totals({ column: "total", descending: false }, false)).toEqual(["10.5", "9", null]);
    expect(sortEntries(entries, { column: "_lsn", descending: true }, false).map((e) => e.info?.seq)).toEqual([3, 2, 1]);
  });
});


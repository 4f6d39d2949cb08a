import { act, render, screen, waitFor } from "@testing-library/react";
import { Profiler } from "react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { Page, PageRequest, TailEntry } from "../lib/types";
import { CollectionsPanel } from "./CollectionsPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["collections", "collectionPage", "tailCollection", "exportCollection"]),
);

const spec = {
  name: "public/items",
  schema: "public",
  table: "items",
  key: ["id"],
  columns: [
    { name: "id", typeOid: 23 },
    { name: "name", typeOid: 25 },
    { name: "body", typeOid: 25 },
  ],
};

beforeEach(() => {
  resetBackend();
});

describe("CollectionsPanel", () => {
  it("previews the change log and appends what the tail pushes", async () => {
    let push: (entries: TailEntry[]) => void = () => {};
    const stop = vi.fn();
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1, lastChangeMs: Date.UTC(2026, 10, 23, 9, 30) }]);
    answer("collectionPage", async (_id, _c, request) =>
      ({
        collection: spec,
        documents: [{ _meta: { op: "c" }, id: 1, name: null }],
        lastSeq: (request as PageRequest).view === "changes" ? 7 : 0,
        lastKey: null,
        hasMore: false,
      }) satisfies Page,
    );
    answer("tailCollection", ((...args: unknown[]) => {
      push = args[3] as (entries: TailEntry[]) => void;
      return stop;
    }) as never);
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    await screen.findByTestId("collection-public/items");
    expect(screen.getByTestId("collection-public/items-last").textContent).toContain(
      new Date(Date.UTC(2026, 10, 23, 9, 30)).toLocaleTimeString(),
    );
    await user.click(await screen.findByTestId("view-changes"));
    await waitFor(() => expect(callsOf("tailCollection").at(-1)?.slice(0, 3)).toEqual(["p1", "public/items", 7]));
    expect(stop).toHaveBeenCalled(); // the rows view's tail ended when the view changed
    // NULL is shown as NULL; a column absent from the document (unchanged TOAST) as a dash.
    const first = screen.getAllByTestId("preview-row")[0];
    expect(first.textContent).toContain("NULL");
    expect(first.textContent).toContain("—");
    act(() => push([{ seq: 8, doc: { _meta: { op: "u" }, id: 1, name: "renamed", body: "x" } }]));
    const rows = screen.getAllByTestId("preview-row");
    expect(rows).toHaveLength(2);
    expect(rows[1].getAttribute("data-op")).toBe("u");
    await user.click(rows[1]);
    expect(screen.getByTestId("preview-json").textContent).toContain('"renamed"');
    // The document opens beside the table (the same grid), not below the list; the count sits with
    // the Rows/Changes switch it counts.
    const beside = screen.getByTestId("preview-scroll").parentElement!;
    expect(beside.className).toBe("preview-with-doc");
    expect(beside.contains(screen.getByTestId("preview-document"))).toBe(true);
    expect(screen.getByTestId("preview-count").parentElement).toBe(screen.getByTestId("view-rows").parentElement);
    expect(screen.getByTestId("preview-count").textContent).toContain("2 changes loaded");
    await user.click(screen.getByTestId("preview-json-close"));
    expect(screen.queryByTestId("preview-document")).toBeNull();
  });

  it("settles while the first page is still on its way (the window froze re-rendering forever)", async () => {
    // The collection list arrives first and the page later: the order that used to set off the loop.
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1, lastChangeMs: null }]);
    let deliver: (page: Page) => void = () => {};
    answer("collectionPage", () => new Promise<Page>((resolve) => (deliver = resolve)));
    answer("tailCollection", (() => () => {}) as never);
    let commits = 0;
    render(
      <Profiler id="collections" onRender={() => commits++}>
        <CollectionsPanel profileId="p1" />
      </Profiler>,
    );
    await screen.findByTestId("collection-public/items");
    await act(() => new Promise((r) => setTimeout(r, 300)));
    expect(commits).toBeLessThan(20);
    act(() => deliver({ collection: spec, documents: [{ _meta: { op: "c" }, id: 1, name: "one" }], lastSeq: 0, lastKey: "[1]", hasMore: false }));
    expect((await screen.findAllByTestId("preview-row"))[0].textContent).toContain("one");
  });

  it("says how to get collections when there are none", async () => {
    answer("collections", async () => []);
    render(<CollectionsPanel profileId="p1" />);
    expect((await screen.findByTestId("collections-empty")).textContent).toContain("start the capture");
  });

  it("filters in the engine and in the live tail by one rule, and scrolls rows page by page", async () => {
    let push: (entries: TailEntry[]) => void = () => {};
    answer("collections", async () => [{ name: "public/items", rows: 3, changes: 3, lastChangeMs: null }]);
    answer("collectionPage", async (_id, _c, request) => {
      const r = request as PageRequest;
      const all = [1, 2, 3].map((id) => ({ _meta: { op: "c" }, id, name: `n${id}`, body: "b" }));
      const after = r.afterKey === null ? 0 : Number(r.afterKey);
      const docs = all
        .filter((d) => d.id > after)
        .filter((d) => !r.filter || String(d[r.filter.field as "name"]) === r.filter.value)
        .slice(0, 2);
      return {
        collection: spec,
        documents: docs,
        lastSeq: r.view === "changes" ? 3 : 0,
        lastKey: docs.length ? String(docs[docs.length - 1].id) : r.afterKey,
        hasMore: r.filter === null && docs.length === 2,
      } satisfies Page;
    });
    answer("tailCollection", ((...args: unknown[]) => {
      push = args[3] as (entries: TailEntry[]) => void;
      return () => {};
    }) as never);
    answer("exportCollection", async () => ({ path: "/home/u/Downloads/public_items-changes-1.csv", documents: 1 }));
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    // Page one has more: the second page is read as the end of the table comes into view.
    await waitFor(() => expect(screen.getAllByTestId("preview-row")).toHaveLength(3));
    const pages = callsOf("collectionPage").map((c) => (c[2] as PageRequest).afterKey);
    expect(pages).toEqual([null, "2"]);

    await user.click(screen.getByTestId("view-changes"));
    await user.selectOptions(await screen.findByTestId("filter-field"), "name");
    await user.type(screen.getByTestId("filter-value"), "n2");
    await user.click(screen.getByTestId("filter-apply"));
    await waitFor(() => expect(screen.getAllByTestId("preview-row")).toHaveLength(1));
    expect((callsOf("collectionPage").at(-1)![2] as PageRequest).filter).toEqual({ field: "name", value: "n2", contains: false });
    // Pushed changes pass through the same filter.
    act(() =>
      push([
        { seq: 4, doc: { _meta: { op: "u" }, id: 2, name: "n2", body: "x" } },
        { seq: 5, doc: { _meta: { op: "u" }, id: 3, name: "n3", body: "x" } },
      ]),
    );
    const ops = screen.getAllByTestId("preview-row").map((r) => r.getAttribute("data-op"));
    expect(ops).toEqual(["c", "u"]);

    await user.click(screen.getByTestId("export-csv"));
    expect((await screen.findByTestId("export-path")).textContent).toBe("/home/u/Downloads/public_items-changes-1.csv");
    expect(callsOf("exportCollection")).toEqual([["p1", "public/items", "changes", { field: "name", value: "n2", contains: false }, "csv"]]);
  });
});

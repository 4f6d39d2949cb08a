import { act, render, screen, waitFor } from "@testing-library/react";
import { Profiler } from "react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { BackendError, Page, TailEntry } from "../lib/types";
import { CollectionsPanel } from "./CollectionsPanel";
import { jsonTokens } from "./JsonView";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { changeInfo as info, itemsSpec as spec } from "../test/fixtures";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands([
    "collections",
    "collectionPage",
    "tailCollection",
    "exportCollection",
    "openExportFolder",
  ]),
);


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
        changes: request.view === "changes" ? [info(7, "c")] : [],
        lastSeq: request.view === "changes" ? 7 : 0,
        lastKey: null,
        hasMore: false,
      }) satisfies Page,
    );
    answer("tailCollection", (_id, _collection, _after, _filter, onChange) => {
      push = onChange;
      return stop;
    });
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
    // The change log's own columns come from the engine's info: commit time, LSN, transaction.
    const headers = [...screen.getByTestId("preview-table").querySelectorAll("th")].map((th) => th.textContent);
    expect(headers.slice(0, 5)).toEqual(["op", "committed", "LSN", "xid", "id key"]);
    expect(first.textContent).toContain("0/16B3707");
    expect(first.textContent).toContain("707");
    expect(first.textContent).toContain(new Date(Date.UTC(2026, 10, 23, 9, 30, 7)).toLocaleTimeString());
    act(() =>
      push([
        {
          seq: 8,
          doc: { _meta: { op: "u" }, id: 1, name: "renamed", body: "x" },
          info: info(8, "u", { update: { before: "full", fields: [{ name: "name", before: null, after: "renamed" }] } }),
        },
      ]),
    );
    const rows = screen.getAllByTestId("preview-row");
    expect(rows).toHaveLength(2);
    expect(rows[1].getAttribute("data-op")).toBe("u");
    await user.click(rows[1]);
    expect(screen.getByTestId("preview-json").textContent).toContain('"renamed"');
    // The clicked row is highlighted; the document is coloured; the update's before and after are shown.
    expect(screen.getAllByTestId("preview-row")[1].getAttribute("aria-selected")).toBe("true");
    expect(screen.getAllByTestId("preview-row")[0].getAttribute("aria-selected")).toBe("false");
    const strings = [...screen.getByTestId("preview-json").querySelectorAll(".json-string")].map((e) => e.textContent);
    expect(strings).toContain('"renamed"');
    expect([...screen.getByTestId("preview-json").querySelectorAll(".json-key")].map((e) => e.textContent)).toContain('"name"');
    expect(screen.getByTestId("preview-diff").getAttribute("data-before")).toBe("full");
    expect(screen.getByTestId("preview-diff-field").textContent).toBe("nameNULLrenamed");
    expect(screen.getByTestId("preview-commit").textContent).toContain("LSN 0/16B3708 · transaction 708");
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

  it("says so when the live tail ends on an error, rather than look live", async () => {
    let failTail: (error: BackendError) => void = () => {};
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1, lastChangeMs: null }]);
    answer("collectionPage", async () =>
      ({ collection: spec, documents: [{ _meta: { op: "c" }, id: 1 }], changes: [], lastSeq: 0, lastKey: null, hasMore: false }) satisfies Page,
    );
    answer("tailCollection", (_id, _collection, _after, _filter, _onChange, onError) => {
      failTail = onError;
      return () => {};
    });
    render(<CollectionsPanel profileId="p1" />);
    await waitFor(() => expect(callsOf("tailCollection")).toHaveLength(1));
    act(() => failTail({ kind: "Storage", message: "reading the store: disk I/O error" }));
    expect((await screen.findByRole("alert")).textContent).toContain("disk I/O error");
  });

  it("settles while the first page is still on its way (the window froze re-rendering forever)", async () => {
    // The collection list arrives first and the page later: the order that used to set off the loop.
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1, lastChangeMs: null }]);
    let deliver: (page: Page) => void = () => {};
    answer("collectionPage", () => new Promise<Page>((resolve) => (deliver = resolve)));
    answer("tailCollection", () => () => {});
    let commits = 0;
    render(
      <Profiler id="collections" onRender={() => commits++}>
        <CollectionsPanel profileId="p1" />
      </Profiler>,
    );
    await screen.findByTestId("collection-public/items");
    await act(() => new Promise((r) => setTimeout(r, 300)));
    expect(commits).toBeLessThan(20);
    act(() =>
      deliver({ collection: spec, documents: [{ _meta: { op: "c" }, id: 1, name: "one" }], changes: [], lastSeq: 0, lastKey: "[1]", hasMore: false }),
    );
    expect((await screen.findAllByTestId("preview-row"))[0].textContent).toContain("one");
  });

  it("says how to get collections when there are none", async () => {
    answer("collections", async () => []);
    render(<CollectionsPanel profileId="p1" />);
    expect((await screen.findByTestId("collections-empty")).textContent).toContain("start the capture");
  });

  it("filters with a CEL expression in the engine (the tail too), scrolls rows page by page, exports and opens the folder", async () => {
    let push: (entries: TailEntry[]) => void = () => {};
    answer("collections", async () => [{ name: "public/items", rows: 3, changes: 3, lastChangeMs: null }]);
    answer("collectionPage", async (_id, _c, r) => {
      const all = [1, 2, 3].map((id) => ({ _meta: { op: "c" }, id, name: `n${id}`, body: "b" }));
      const after = r.afterKey === null ? 0 : Number(r.afterKey);
      const docs = all
        .filter((d) => d.id > after)
        .filter((d) => !r.filter || r.filter === `record.name == "n2" && action != "delete"` && d.id === 2)
        .slice(0, 2);
      return {
        collection: spec,
        documents: docs,
        changes: r.view === "changes" ? docs.map((d) => info(d.id, "c")) : [],
        lastSeq: r.view === "changes" ? 3 : 0,
        lastKey: docs.length ? String(docs[docs.length - 1].id) : r.afterKey,
        hasMore: r.filter === null && docs.length === 2,
      } satisfies Page;
    });
    answer("tailCollection", (_id, _collection, _after, _filter, onChange) => {
      push = onChange;
      return () => {};
    });
    answer("exportCollection", async () => ({ path: "/home/u/Downloads/public_items-changes-2026-11-30-1805.csv", documents: 1 }));
    answer("openExportFolder", async () => undefined);
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    // Page one has more: the second page is read as the end of the table comes into view.
    await waitFor(() => expect(screen.getAllByTestId("preview-row")).toHaveLength(3));
    const pages = callsOf("collectionPage").map((c) => c[2].afterKey);
    expect(pages).toEqual([null, "2"]);
    // The rows view's tail hears every change (a change can make a row stop matching).
    expect(callsOf("tailCollection").at(-1)?.[3]).toBeNull();

    await user.click(screen.getByTestId("view-changes"));
    const expression = `record.name == "n2" && action != "delete"`;
    await user.type(await screen.findByTestId("filter-expression"), expression.replace(/[{[]/g, "$&$&"));
    await user.click(screen.getByTestId("filter-apply"));
    await waitFor(() => expect(screen.getAllByTestId("preview-row")).toHaveLength(1));
    expect(callsOf("collectionPage").at(-1)![2].filter).toBe(expression);
    // The change log's tail is filtered in the engine by the same expression: what it pushes is shown.
    await waitFor(() => expect(callsOf("tailCollection").at(-1)?.slice(0, 4)).toEqual(["p1", "public/items", 3, expression]));
    act(() => push([{ seq: 4, doc: { _meta: { op: "u" }, id: 2, name: "n2", body: "x" }, info: info(4, "u") }]));
    const ops = screen.getAllByTestId("preview-row").map((r) => r.getAttribute("data-op"));
    expect(ops).toEqual(["c", "u"]);

    await user.click(screen.getByTestId("export-csv"));
    expect((await screen.findByTestId("export-path")).textContent).toBe("/home/u/Downloads/public_items-changes-2026-11-30-1805.csv");
    expect(callsOf("exportCollection")).toEqual([["p1", "public/items", "changes", expression, "csv"]]);
    await user.click(screen.getByTestId("export-open-folder"));
    expect(callsOf("openExportFolder")).toEqual([[]]);
  });

  it("drops a next page that arrives after another collection was chosen, and pages the new one from its start", async () => {
    answer("collections", async () => [
      { name: "public/items", rows: 3, changes: 3, lastChangeMs: null },
      { name: "public/other", rows: 1, changes: 1, lastChangeMs: null },
    ]);
    let releaseItems: () => void = () => {};
    answer("collectionPage", async (_id, collection, r) => {
      if (collection === "public/other")
        return { collection: spec, documents: [{ _meta: { op: "c" }, id: 9, name: "other" }], changes: [], lastSeq: 0, lastKey: "9", hasMore: false } satisfies Page;
      if (r.afterKey === null)
        return {
          collection: spec,
          documents: [1, 2].map((id) => ({ _meta: { op: "c" }, id, name: `item${id}` })),
          changes: [],
          lastSeq: 0,
          lastKey: "2",
          hasMore: true,
        } satisfies Page;
      // The items' second page is slow: it answers only once the other collection is on screen.
      await new Promise<void>((resolve) => (releaseItems = resolve));
      return { collection: spec, documents: [{ _meta: { op: "c" }, id: 3, name: "item3" }], changes: [], lastSeq: 0, lastKey: "3", hasMore: false } satisfies Page;
    });
    answer("tailCollection", () => () => {});
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    await waitFor(() => expect(callsOf("collectionPage").map((c) => c[2].afterKey)).toEqual([null, "2"]));
    await user.click(screen.getByTestId("collection-public/other"));
    await waitFor(() => expect(screen.getAllByTestId("preview-row").map((r) => r.textContent)).toEqual([expect.stringContaining("other")]));
    await act(async () => releaseItems());
    await act(() => new Promise((r) => setTimeout(r, 50)));
    const rows = screen.getAllByTestId("preview-row").map((r) => r.textContent ?? "");
    expect(rows).toHaveLength(1);
    expect(rows[0]).toContain("other");
    // The other collection was never asked for a page after the items' key.
    expect(callsOf("collectionPage").filter((c) => c[1] === "public/other").map((c) => c[2].afterKey)).toEqual([null]);
  });

  it("shows the engine's refusal of a filter under it, with a caret at the position", async () => {
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1, lastChangeMs: null }]);
    answer("collectionPage", async (_id, _c, r) => {
      if (r.filter)
        throw {
          kind: "InvalidInput",
          message: `filter: line 1, column 30: 'id' is a number but "3" is text, so they are never equal: write 3 without quotes`,
        };
      return { collection: spec, documents: [{ _meta: { op: "c" }, id: 1, name: "a" }], changes: [], lastSeq: 0, lastKey: "1", hasMore: false } satisfies Page;
    });
    answer("tailCollection", () => () => {});
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    await screen.findAllByTestId("preview-row");
    await user.type(screen.getByTestId("filter-expression"), `record.name == "a" && record.id == "3"`);
    await user.click(screen.getByTestId("filter-apply"));
    const problem = await screen.findByTestId("filter-problem");
    expect(problem.textContent).toContain("'id' is a number");
    expect(screen.getByTestId("filter-caret").textContent).toBe(`record.name == "a" && record.id == "3"\n${" ".repeat(29)}^`);
    expect(screen.getByTestId("filter-expression").getAttribute("aria-invalid")).toBe("true");
    expect(screen.queryByTestId("collections-error")).toBeNull();
  });

  it("sorts rows in the engine by a clicked column: ascending, descending, then key order", async () => {
    answer("collections", async () => [{ name: "public/items", rows: 2, changes: 2, lastChangeMs: null }]);
    answer("collectionPage", async () => ({
      collection: spec,
      documents: [
        { _meta: { op: "c" }, id: 1, name: "b" },
        { _meta: { op: "c" }, id: 2, name: "a" },
      ],
      changes: [],
      lastSeq: 0,
      lastKey: "2",
      hasMore: false,
    }));
    answer("tailCollection", () => () => {});
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    await screen.findAllByTestId("preview-row");
    const sorts = () => callsOf("collectionPage").map((c) => c[2].sort);
    await user.click(screen.getByTestId("sort-name"));
    await waitFor(() => expect(sorts().at(-1)).toEqual({ column: "name", descending: false }));
    expect(screen.getByTestId("sort-name").parentElement!.getAttribute("aria-sort")).toBe("ascending");
    expect(screen.getByTestId("preview-sorted").textContent).toContain("in the engine");
    await user.click(screen.getByTestId("sort-name"));
    await waitFor(() => expect(sorts().at(-1)).toEqual({ column: "name", descending: true }));
    await user.click(screen.getByTestId("sort-name"));
    await waitFor(() => expect(sorts().at(-1)).toBeNull());
  });
});

describe("jsonTokens", () => {
  it("colours keys, strings, numbers and literals, and joins back to the text", () => {
    const text = JSON.stringify({ a: "x: \"y\"", n: -1.5e3, ok: true, none: null }, null, 2);
    const tokens = jsonTokens(text);
    expect(tokens.map((t) => t.text).join("")).toBe(text);
    const kinds = tokens.filter((t) => t.kind !== "plain").map((t) => `${t.kind}:${t.text}`);
    expect(kinds).toEqual(['key:"a"', 'string:"x: \\"y\\""', 'key:"n"', "number:-1500", 'key:"ok"', "literal:true", 'key:"none"', "literal:null"]);
  });
});

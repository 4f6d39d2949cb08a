import { act, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { Page, TailEntry } from "../lib/types";
import { CollectionsPanel } from "./CollectionsPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["collections", "collectionPage", "tailCollection"]),
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
    answer("collections", async () => [{ name: "public/items", rows: 1, changes: 1 }]);
    answer("collectionPage", async (_id, _c, view) =>
      ({
        collection: spec,
        documents: [{ _meta: { op: "c" }, id: 1, name: null }],
        lastSeq: view === "changes" ? 7 : 0,
      }) satisfies Page,
    );
    answer("tailCollection", ((...args: unknown[]) => {
      push = args[3] as (entries: TailEntry[]) => void;
      return stop;
    }) as never);
    const user = userEvent.setup();
    render(<CollectionsPanel profileId="p1" />);
    await screen.findByTestId("collection-public/items");
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
  });

  it("says how to get collections when there are none", async () => {
    answer("collections", async () => []);
    render(<CollectionsPanel profileId="p1" />);
    expect((await screen.findByTestId("collections-empty")).textContent).toContain("start the capture");
  });
});

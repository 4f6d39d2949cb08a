import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { CollectionList } from "./CollectionList";

describe("CollectionList", () => {
  it("lists each collection with its counts, its last change when it has one, and marks the selected one", async () => {
    const onSelect = vi.fn();
    const last = Date.UTC(2026, 10, 23, 9, 30);
    render(
      <CollectionList
        collections={[
          { name: "public/items", rows: 3, changes: 5, lastChangeMs: last },
          { name: "public/empty", rows: 0, changes: 0, lastChangeMs: null },
        ]}
        selected="public/items"
        onSelect={onSelect}
      />,
    );
    expect(screen.getByTestId("collection-public/items-counts").textContent).toBe("3 rows · 5 changes");
    expect(screen.getByTestId("collection-public/items-last").textContent).toContain(new Date(last).toLocaleTimeString());
    expect(screen.queryByTestId("collection-public/empty-last")).toBeNull();
    expect(screen.getByTestId("collection-public/items").className).toBe("tab current");
    expect(screen.getByTestId("collection-public/empty").className).toBe("tab");
    await userEvent.setup().click(screen.getByTestId("collection-public/empty"));
    expect(onSelect).toHaveBeenCalledWith("public/empty");
  });
});

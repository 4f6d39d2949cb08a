import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import { CollectionFilter } from "./CollectionFilter";

describe("CollectionFilter", () => {
  it("applies the typed expression, none for blanks, and Clear empties the field and applies none", async () => {
    const onApply = vi.fn();
    const user = userEvent.setup();
    render(
      <CollectionFilter filter={null} error={null} onApply={onApply}>
        <button type="button" data-testid="beside">
          Export
        </button>
      </CollectionFilter>,
    );
    // What the panel puts at the end of the filter's row stays in that row.
    expect(screen.getByTestId("beside").parentElement).toBe(screen.getByTestId("filter-apply").parentElement);
    // Nothing to clear yet.
    expect(screen.queryByTestId("filter-clear")).toBeNull();
    const field = screen.getByTestId("filter-expression") as HTMLInputElement;
    await user.type(field, "   ");
    await user.click(screen.getByTestId("filter-apply"));
    expect(onApply).toHaveBeenLastCalledWith(null);
    await user.clear(field);
    await user.type(field, "record.id == 3");
    await user.keyboard("{Enter}");
    expect(onApply).toHaveBeenLastCalledWith("record.id == 3");
    await user.click(screen.getByTestId("filter-clear"));
    expect(field.value).toBe("");
    expect(onApply).toHaveBeenLastCalledWith(null);
  });

  it("offers Clear for an applied filter even with the field empty", () => {
    render(<CollectionFilter filter="record.id == 3" error={null} onApply={() => {}} />);
    expect(screen.getByTestId("filter-clear")).toBeTruthy();
  });

  it("shows the engine's refusal under the field, without its prefix, with a caret under the typed line", async () => {
    const error = { kind: "InvalidInput" as const, message: "filter: line 1, column 11: no such field 'nme'" };
    const user = userEvent.setup();
    const { rerender } = render(<CollectionFilter filter={null} error={null} onApply={() => {}} />);
    await user.type(screen.getByTestId("filter-expression"), "record.nme == 1");
    rerender(<CollectionFilter filter="record.nme == 1" error={error} onApply={() => {}} />);
    const field = screen.getByTestId("filter-expression");
    expect(field.getAttribute("aria-invalid")).toBe("true");
    expect(field.getAttribute("aria-describedby")).toBe("filter-problem");
    expect(screen.getByTestId("filter-caret").textContent).toBe(`record.nme == 1\n${" ".repeat(10)}^`);
    expect(screen.getByTestId("filter-problem").textContent).toContain("line 1, column 11: no such field 'nme'");
    expect(screen.getByTestId("filter-problem").textContent).not.toContain("filter: ");
  });
});

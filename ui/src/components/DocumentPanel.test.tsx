import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import type { ChangeInfo } from "../lib/types";
import { DocumentPanel } from "./DocumentPanel";

const info = (update: ChangeInfo["update"]): ChangeInfo => ({
  seq: 9,
  op: "u",
  snapshot: false,
  lsn: "0/16B3748",
  xid: 771,
  committedMs: Date.UTC(2026, 10, 30, 18, 5),
  update,
});

describe("DocumentPanel", () => {
  it("copies the document as indented JSON", async () => {
    const user = userEvent.setup();
    const writeText = vi.spyOn(navigator.clipboard, "writeText").mockResolvedValue(undefined);
    render(<DocumentPanel doc={{ id: 1, name: "a" }} info={null} onClose={() => {}} />);
    await user.click(screen.getByTestId("preview-copy"));
    expect(writeText).toHaveBeenCalledWith('{\n  "id": 1,\n  "name": "a"\n}');
    expect(screen.getByTestId("preview-copy").textContent).toBe("Copied");
  });

  it("says the previous values are not known rather than showing a made-up before", () => {
    render(<DocumentPanel doc={{ id: 1, name: "b" }} info={info({ before: "unknown", fields: [] })} onClose={() => {}} />);
    expect(screen.getByTestId("preview-diff").getAttribute("data-before")).toBe("unknown");
    expect(screen.getByTestId("preview-diff-note").textContent).toContain("Before not known");
    expect(screen.queryByTestId("preview-diff-field")).toBeNull();
    expect(screen.getByTestId("preview-commit").textContent).toContain("LSN 0/16B3748 · transaction 771");
  });

  it("shows a key change, and says the other columns' previous values are not known", () => {
    render(
      <DocumentPanel
        doc={{ id: 2, name: "b" }}
        info={info({ before: "key", fields: [{ name: "id", before: 1, after: 2 }] })}
        onClose={() => {}}
      />,
    );
    expect(screen.getByTestId("preview-diff-field").textContent).toBe("id12");
    expect(screen.getByTestId("preview-diff-note").textContent).toContain("other columns");
  });

  it("points to the document for a value too large to repeat", () => {
    render(
      <DocumentPanel doc={{ id: 1, body: "…" }} info={info({ before: "full", fields: [{ name: "body", before: "short" }] })} onClose={() => {}} />,
    );
    expect(screen.getByTestId("preview-diff-field").textContent).toBe("bodyshort(large value: see the document)");
  });
});

import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { HandOffPanel } from "./HandOffPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";

vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["exportCapture"]));

beforeEach(() => {
  resetBackend();
});

describe("HandOffPanel", () => {
  it("shows the file the engine wrote for the chosen engine, with what to do next", async () => {
    answer("exportCapture", async (_id, engine) => ({
      engine,
      fileName: engine === "sequin" ? "sequin.yaml" : "flow.yaml",
      text: `# ${String(engine)}\ndatabases: []\n`,
    }));
    const user = userEvent.setup();
    render(<HandOffPanel profileId="p1" />);
    await user.click(screen.getByTestId("hand-off-sequin"));
    expect((await screen.findByTestId("hand-off-name")).textContent).toBe("sequin.yaml");
    expect(screen.getByTestId("hand-off-text").textContent).toBe("# sequin\ndatabases: []\n");
    expect(screen.getByTestId("hand-off-file").textContent).toContain("sequin config apply");
    await user.click(screen.getByTestId("hand-off-estuary"));
    await vi.waitFor(() => expect(screen.getByTestId("hand-off-name").textContent).toBe("flow.yaml"));
    expect(callsOf("exportCapture")).toEqual([
      ["p1", "sequin"],
      ["p1", "estuary"],
    ]);
  });

  it("says why when there is nothing to export yet", async () => {
    answer("exportCapture", async () => {
      throw { kind: "InvalidInput", message: "profile 'Shop' has no saved capture: pick tables and publish before exporting" };
    });
    const user = userEvent.setup();
    render(<HandOffPanel profileId="p1" />);
    await user.click(screen.getByTestId("hand-off-estuary"));
    expect((await screen.findByTestId("hand-off-error-message")).textContent).toContain("publish before exporting");
    expect(screen.queryByTestId("hand-off-file")).toBeNull();
  });
});

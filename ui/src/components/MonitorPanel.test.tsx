import { act, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { clearHistory, record } from "../lib/history";
import type { RunStatus } from "../lib/types";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { slotHealth } from "../test/fixtures";
import { MonitorPanel } from "./MonitorPanel";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["slotHealth", "captureStatus", "onCaptureStatus", "resyncCapture"]),
);
// uPlot draws on a canvas, which jsdom lacks; the chart's inputs are what is checked here.
vi.mock("./Chart", () => ({
  Chart: ({ testId, x, y }: { testId: string; x: number[]; y: (number | null)[] }) => (
    <div data-testid={testId} data-x={JSON.stringify(x)} data-y={JSON.stringify(y)} />
  ),
}));

const streaming = (changesPerSecond: number, lagMs: number | null): RunStatus => ({
  profile: "p1",
  state: "streaming",
  backfills: {},
  changes: 0,
  commits: 0,
  checkpoint: "0/1",
  changesPerSecond,
  lagMs,
  lastCommitMicros: null,
  error: null,
});

beforeEach(() => {
  resetBackend();
  clearHistory();
});

describe("MonitorPanel", () => {
  it("shows a healthy slot's facts and says there is nothing to do", async () => {
    answer("slotHealth", async () => slotHealth({}));
    render(<MonitorPanel profileId="p1" />);
    expect((await screen.findByTestId("health-ok")).textContent).toContain("nothing to do");
    expect(screen.getByTestId("health-retained").textContent).toBe("2.0 MiB");
    expect(screen.getByTestId("health-wal-status").textContent).toBe("reserved");
    expect(screen.getByTestId("monitor-empty")).toBeTruthy();
  });

  it("lists warnings by level and counts down Neon's removal of an inactive slot", async () => {
    answer("slotHealth", async () =>
      slotHealth({
        active: false,
        neon: true,
        neonRemovalInSecs: 30 * 3600 + 15 * 60,
        warnings: [
          { id: "neonRemoval", level: "warn", message: "Neon removes a slot … about 30.2 h left." },
          { id: "retained", level: "warn", message: "The server keeps 3072 MiB of WAL" },
        ],
      }),
    );
    render(<MonitorPanel profileId="p1" />);
    const removal = await screen.findByTestId("health-warning-neonRemoval");
    expect(removal.getAttribute("data-level")).toBe("warn");
    expect(screen.getByTestId("health-neon-countdown").textContent).toBe("about 30 h 15 min");
    expect(screen.queryByTestId("health-ok")).toBeNull();
  });

  it("charts the pushed throughput and lag of this profile only, as they arrive", async () => {
    answer("slotHealth", async () => slotHealth({}));
    render(<MonitorPanel profileId="p1" />);
    act(() => {
      record(streaming(120, 4.5), 1_000_000);
      record({ ...streaming(999, 1), profile: "other" }, 1_000_500);
      record(streaming(80, null), 1_001_000);
    });
    await waitFor(() => expect(screen.getByTestId("chart-throughput")).toBeTruthy());
    expect(JSON.parse(screen.getByTestId("chart-throughput").getAttribute("data-y")!)).toEqual([120, 80]);
    expect(JSON.parse(screen.getByTestId("chart-lag").getAttribute("data-y")!)).toEqual([4.5, null]);
    expect(JSON.parse(screen.getByTestId("chart-lag").getAttribute("data-x")!)).toEqual([1000, 1001]);
  });

  it("shows a capture refused for a gap with the way out", async () => {
    answer("slotHealth", async () => slotHealth({ exists: false }));
    answer("onCaptureStatus", async () => () => {});
    answer("captureStatus", async () => ({
      ...streaming(0, null),
      state: "failed",
      error: { kind: "Diverged", message: "replication slot \"s\" no longer exists" },
    }));
    answer("resyncCapture", async () => streaming(0, null));
    render(<MonitorPanel profileId="p1" />);
    expect((await screen.findByTestId("monitor-diverged-message")).textContent).toContain("no longer exists");
    await userEvent.setup().click(screen.getByTestId("monitor-diverged-resync"));
    await waitFor(() => expect(callsOf("resyncCapture")).toEqual([["p1"]]));
  });
});

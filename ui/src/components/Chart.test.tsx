import { render, screen } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { Chart } from "./Chart";

// uPlot draws on a canvas, which jsdom lacks: a stand-in records what the chart asks of it.
const plots: { options: { series: { label?: string }[] }; data: unknown[]; sizes: unknown[]; destroyed: boolean }[] = [];
vi.mock("uplot", () => ({
  default: class {
    record: (typeof plots)[number];
    constructor(options: (typeof plots)[number]["options"]) {
      this.record = { options, data: [], sizes: [], destroyed: false };
      plots.push(this.record);
    }
    setData(data: unknown) {
      this.record.data.push(data);
    }
    setSize(size: unknown) {
      this.record.sizes.push(size);
    }
    destroy() {
      this.record.destroyed = true;
    }
  },
}));

const observers: { disconnected: boolean; resize: () => void }[] = [];

beforeEach(() => {
  plots.length = 0;
  observers.length = 0;
  vi.stubGlobal(
    "ResizeObserver",
    class {
      entry: (typeof observers)[number];
      constructor(resize: () => void) {
        this.entry = { disconnected: false, resize };
        observers.push(this.entry);
      }
      observe() {}
      disconnect() {
        this.entry.disconnected = true;
      }
    },
  );
});

afterEach(() => {
  vi.unstubAllGlobals();
});

describe("Chart", () => {
  it("names what it shows over how many seconds, and plots each new series without a new chart", () => {
    const { rerender } = render(<Chart title="Throughput" unit="changes/s" x={[1, 2]} y={[5, null]} testId="c" />);
    expect(screen.getByRole("img").getAttribute("aria-label")).toBe("Throughput over the last 2 seconds");
    expect(screen.getByTestId("c").textContent).toBe("Throughput");
    expect(plots).toHaveLength(1);
    expect(plots[0].options.series[1].label).toBe("Throughput");
    expect(plots[0].data).toEqual([[[1, 2], [5, null]]]);

    rerender(<Chart title="Throughput" unit="changes/s" x={[1, 2, 3]} y={[5, null, 7]} testId="c" />);
    expect(plots).toHaveLength(1);
    expect(plots[0].data.at(-1)).toEqual([
      [1, 2, 3],
      [5, null, 7],
    ]);
    expect(screen.getByTestId("c").getAttribute("data-points")).toBe("3");
  });

  it("follows its box's width and lets go of the plot when it leaves", () => {
    const { unmount } = render(<Chart title="Lag" unit="bytes" x={[]} y={[]} testId="c" />);
    expect(observers).toHaveLength(1);
    observers[0].resize();
    expect(plots[0].sizes).toEqual([{ width: 0, height: 160 }]);
    unmount();
    expect(plots[0].destroyed).toBe(true);
    expect(observers[0].disconnected).toBe(true);
  });
});

import { act, render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { RunStatus } from "../lib/types";
import { CapturePanel } from "./CapturePanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { runStatus, slotHealth } from "../test/fixtures";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["captureStatus", "onCaptureStatus", "startCapture", "stopCapture", "stopAndDropSlot", "slotHealth", "resyncCapture", "discardStore"]),
);

beforeEach(() => {
  resetBackend();
});

describe("CapturePanel", () => {
  it("starts the capture and shows pushed backfill progress and stream facts", async () => {
    let push: (s: RunStatus) => void = () => {};
    answer("captureStatus", async () => runStatus({}));
    answer("onCaptureStatus", async (listener) => {
      push = listener;
      return () => {};
    });
    answer("startCapture", async () => runStatus({ state: "starting" }));
    answer("stopCapture", async () => runStatus({ state: "stopped" }));
    answer("slotHealth", async () => slotHealth({ unconfirmedBytes: 2048 }));
    const user = userEvent.setup();
    render(<CapturePanel profileId="p1" />);
    await waitFor(() => expect(screen.getByTestId("capture-state").textContent).toBe("Stopped"));
    expect((screen.getByTestId("capture-stop") as HTMLButtonElement).disabled).toBe(true);
    await user.click(screen.getByTestId("capture-start"));
    expect(callsOf("startCapture")).toEqual([["p1"]]);
    expect(screen.getByTestId("capture-state").textContent).toBe("Starting");

    const half = { collection: "public/items", rows: 500, estimatedRows: 1000, rowsPerSecond: 250, secondsLeft: 2, done: false };
    act(() => push(runStatus({ state: "starting", backfills: { "public/items": half } })));
    expect(screen.getByTestId("backfill-public/items-percent").textContent).toBe("50%");
    // Another profile's status is not this one's.
    act(() => push(runStatus({ profile: "p2", state: "failed" })));
    expect(screen.getByTestId("capture-state").textContent).toBe("Starting");
    act(() =>
      push(
        runStatus({
          state: "streaming",
          backfills: { "public/items": { ...half, rows: 1000, done: true } },
          changes: 1004,
          lagMs: 1.25,
        }),
      ),
    );
    expect(screen.getByTestId("backfill-public/items-percent").textContent).toBe("100%");
    expect(screen.getByTestId("stream-changes").textContent).toBe((1004).toLocaleString());
    expect(screen.getByTestId("stream-lag").textContent).toBe("1.3 ms");
    // The server's lag in bytes is read once streaming.
    await waitFor(() => expect(screen.getByTestId("stream-lag-bytes").textContent).toBe("2.0 KiB"));
    expect(callsOf("slotHealth")).toEqual([["p1"]]);
    await user.click(screen.getByTestId("capture-stop"));
    expect(callsOf("stopCapture")).toEqual([["p1"]]);
  });

  it("drops the slot only after the confirmation that says what is lost", async () => {
    const user = userEvent.setup();
    answer("captureStatus", async () => runStatus({ state: "streaming" }));
    answer("onCaptureStatus", async () => () => {});
    answer("stopAndDropSlot", async () => runStatus({ state: "stopped" }));
    render(<CapturePanel profileId="p1" />);
    await waitFor(() => expect(screen.getByTestId("capture-state").textContent).toBe("Streaming"));

    await user.click(screen.getByTestId("capture-drop"));
    expect(screen.getByTestId("capture-drop-confirm").textContent).toContain("backfills every table again");
    await user.click(screen.getByTestId("capture-drop-cancel"));
    expect(callsOf("stopAndDropSlot")).toEqual([]);

    await user.click(screen.getByTestId("capture-drop"));
    await user.click(screen.getByTestId("capture-drop-run"));
    await waitFor(() => expect(screen.getByTestId("capture-state").textContent).toBe("Stopped"));
    expect(callsOf("stopAndDropSlot")).toEqual([["p1"]]);
    expect(screen.queryByTestId("capture-drop-confirm")).toBeNull();
  });

  it("offers a re-backfill when the store can no longer follow the source, and only then", async () => {
    const user = userEvent.setup();
    const diverged = { kind: "Diverged" as const, message: "replication slot \"s\" has confirmed up to 0/2, past the store's checkpoint 0/1" };
    answer("captureStatus", async () => runStatus({ state: "failed", error: diverged }));
    answer("onCaptureStatus", async () => () => {});
    answer("resyncCapture", async () => runStatus({ state: "starting" }));
    render(<CapturePanel profileId="p1" />);
    expect((await screen.findByTestId("capture-failure-message")).textContent).toContain("past the store's checkpoint");
    expect(screen.getByTestId("capture-failure-kind").textContent).toBe("Diverged");
    await user.click(screen.getByTestId("capture-failure-resync"));
    expect(callsOf("resyncCapture")).toEqual([["p1"]]);
    await waitFor(() => expect(screen.getByTestId("capture-state").textContent).toBe("Starting"));
    expect(screen.queryByTestId("capture-failure-resync")).toBeNull();
  });

  it("offers to discard the local copy when an encrypted store's key is lost, after a confirmation", async () => {
    const user = userEvent.setup();
    const locked = { kind: "Locked" as const, message: "the store in /d is encrypted and cannot be opened: its key is not in the OS keychain" };
    answer("captureStatus", async () => runStatus({ state: "failed", error: locked }));
    answer("onCaptureStatus", async () => () => {});
    answer("discardStore", async () => ({
      profile: "Shop",
      profileRemoved: false,
      store: "/d",
      keychainEntries: ["store key"],
      slotDropped: "tidepool_slot",
    }));
    render(<CapturePanel profileId="p1" />);
    expect((await screen.findByTestId("capture-failure-kind")).textContent).toBe("Locked");
    expect(screen.queryByTestId("capture-failure-resync")).toBeNull();
    await user.click(screen.getByTestId("capture-failure-discard"));
    expect(callsOf("discardStore")).toEqual([]);
    await user.click(screen.getByTestId("capture-failure-discard-confirm"));
    expect(callsOf("discardStore")).toEqual([["p1"]]);
    const done = await screen.findByTestId("capture-failure-discarded");
    expect(done.textContent).toContain("its local store (/d)");
    expect(done.textContent).toContain("replication slot tidepool_slot");
    expect(done.textContent).toContain("keychain: store key");
  });

  it("offers no re-backfill for other failures", async () => {
    answer("captureStatus", async () => runStatus({ state: "failed", error: { kind: "Connection", message: "no answer" } }));
    answer("onCaptureStatus", async () => () => {});
    render(<CapturePanel profileId="p1" />);
    await screen.findByTestId("capture-failure-message");
    expect(screen.queryByTestId("capture-failure-resync")).toBeNull();
  });
});

import { act, render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { ClosePrompt } from "./ClosePrompt";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["onCloseRequested", "stopCapturesAndQuit", "keepCapturingInBackground", "demoProfile"]),
);

let request: () => void = () => {};
beforeEach(() => {
  resetBackend();
  answer("demoProfile", async () => null);
  answer("onCloseRequested", async (listener) => {
    request = listener;
    return () => {};
  });
});

describe("ClosePrompt", () => {
  it("appears only when the window is closed during a capture, and each answer does what it says", async () => {
    const user = userEvent.setup();
    answer("keepCapturingInBackground", async () => undefined);
    answer("stopCapturesAndQuit", async () => undefined);
    render(<ClosePrompt />);
    expect(screen.queryByTestId("close-prompt")).toBeNull();

    await act(async () => request());
    expect(screen.getByTestId("close-prompt").textContent).toContain("keeps the replication slot");
    expect(screen.queryByTestId("close-demo")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("close-keep"));
    await user.click(screen.getByTestId("close-keep"));
    expect(callsOf("keepCapturingInBackground")).toHaveLength(1);
    expect(screen.queryByTestId("close-prompt")).toBeNull();

    await act(async () => request());
    await user.keyboard("{Escape}");
    expect(screen.queryByTestId("close-prompt")).toBeNull();
    expect(callsOf("stopCapturesAndQuit")).toHaveLength(0);

    await act(async () => request());
    await user.click(screen.getByTestId("close-stop"));
    expect(callsOf("stopCapturesAndQuit")).toHaveLength(1);
  });

  it("promises no resume for the demo, which is removed on quit", async () => {
    answer("demoProfile", async () => "demo-1");
    render(<ClosePrompt />);
    await act(async () => request());
    const note = await screen.findByTestId("close-demo");
    expect(note.textContent).toContain("The demo database is removed when Tidepool quits");
    expect(note.textContent).toContain("nothing to resume");
    expect(screen.queryByTestId("close-resume")).toBeNull();
    expect(screen.getByTestId("close-stop").textContent).toBe("Stop, remove the demo and quit");
  });
});

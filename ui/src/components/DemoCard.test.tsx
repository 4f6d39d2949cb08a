import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { profileView } from "../test/fixtures";
import type { ProfileView } from "../lib/types";
import { DemoCard, useDemo } from "./DemoCard";

/** The card with its own demo, as the app wires it. */
function Card(props: { onStarted: (profile: ProfileView) => void; onStopped: () => void }) {
  return <DemoCard demo={useDemo(props)} />;
}

vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["startDemo", "stopDemo", "demoProfile"]));

describe("DemoCard", () => {
  beforeEach(() => {
    resetBackend();
    answer("demoProfile", async () => null);
  });

  it("starts the demo, shows that it runs, and removes it", async () => {
    const user = userEvent.setup();
    const demo = profileView({ id: "demo-1", name: "Demo database" });
    let finish: (p: ProfileView) => void = () => {};
    answer("startDemo", () => new Promise((resolve) => (finish = resolve)));
    answer("stopDemo", async () => ({
      profile: "Demo database",
      profileRemoved: true,
      store: "/data/stores/demo-1",
      keychainEntries: ["database password", "store key"],
      slotDropped: null,
    }));
    const onStarted = vi.fn();
    const onStopped = vi.fn();
    render(<Card onStarted={onStarted} onStopped={onStopped} />);

    await user.click(screen.getByTestId("demo-start"));
    // Start-up takes seconds: the button says what is happening and cannot be pressed twice.
    expect(screen.getByTestId("demo-start").textContent).toContain("Starting");
    expect((screen.getByTestId("demo-start") as HTMLButtonElement).disabled).toBe(true);
    finish(demo);
    await screen.findByTestId("demo-running");
    expect(onStarted).toHaveBeenCalledWith(demo);

    await user.click(screen.getByTestId("demo-stop"));
    // Nothing is removed before the confirmation that says what goes.
    expect(callsOf("stopDemo")).toHaveLength(0);
    const question = screen.getByTestId("demo-stop-confirm").textContent;
    // It says what is lost.
    expect(question).toContain("You lose its sample tables and rows, its connection profile");
    expect(question).toContain("everything captured from it on this machine");
    // The focus is on the safe answer; Escape keeps the demo and gives the focus back.
    expect(document.activeElement).toBe(screen.getByTestId("demo-stop-keep"));
    await user.keyboard("{Escape}");
    expect(screen.queryByTestId("demo-stop-confirm")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("demo-stop"));
    expect(callsOf("stopDemo")).toHaveLength(0);
    await user.click(screen.getByTestId("demo-stop"));
    await user.click(screen.getByTestId("demo-stop-run"));
    await screen.findByTestId("demo-start");
    expect(callsOf("stopDemo")).toHaveLength(1);
    expect(onStopped).toHaveBeenCalled();
    // What went with it, so nothing of the demo is left behind unsaid.
    expect(screen.getByTestId("demo-removed").textContent).toContain("its local store (/data/stores/demo-1)");
  });

  it("says what is missing when the server binaries are not there", async () => {
    answer("startDemo", async () => {
      throw { kind: "Internal", message: "no PostgreSQL server found under /usr/lib/postgresql" };
    });
    render(<Card onStarted={() => {}} onStopped={() => {}} />);
    await userEvent.setup().click(screen.getByTestId("demo-start"));
    expect((await screen.findByTestId("demo-error-message")).textContent).toContain("no PostgreSQL server found");
    expect(screen.getByTestId("demo-error").textContent).toContain("apt-get install postgresql");
  });

  it("says why a removal failed, and offers a new demo (the engine let go of the old one)", async () => {
    answer("demoProfile", async () => "demo-1");
    answer("stopDemo", async () => {
      throw { kind: "Internal", message: "demo store: directory not empty" };
    });
    const user = userEvent.setup();
    render(<Card onStarted={() => {}} onStopped={() => {}} />);
    await user.click(await screen.findByTestId("demo-stop"));
    await user.click(screen.getByTestId("demo-stop-run"));
    expect((await screen.findByTestId("demo-error-message")).textContent).toContain("directory not empty");
    expect(screen.queryByTestId("demo-running")).toBeNull();
    expect((screen.getByTestId("demo-start") as HTMLButtonElement).disabled).toBe(false);
  });

  it("shows a demo already running after a reload of the window", async () => {
    answer("demoProfile", async () => "demo-1");
    render(<Card onStarted={() => {}} onStopped={() => {}} />);
    expect(await screen.findByTestId("demo-stop")).toBeTruthy();
  });
});

import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { App } from "./App";
import { answer, callsOf, resetBackend } from "./test/fakeBackend";
import { profileView } from "./test/fixtures";

vi.mock("./lib/backend", async () =>
  (await import("./test/fakeBackend")).commands([
    "listProfiles",
    "onCaptureStatus",
    "onCloseRequested",
    "demoProfile",
    "startDemo",
    "stopDemo",
    "preflight",
    "captureDefinition",
    "runFix",
    "autofill",
    "saveProfile",
    "testConnection",
    "deleteProfile",
  ]),
);

// uPlot (the Monitor's charts) needs a real window's matchMedia at import; no chart is drawn here.
vi.mock("./components/Chart", () => ({ Chart: () => null }));

beforeEach(() => {
  resetBackend();
  answer("listProfiles", async () => []);
  answer("onCaptureStatus", async () => () => {});
  answer("onCloseRequested", async () => () => {});
  answer("demoProfile", async () => null);
});

describe("App's first screen", () => {
  it("says what Tidepool does and offers the two ways to start first, above the form", async () => {
    render(<App />);
    const welcome = await screen.findByTestId("welcome");
    expect(screen.queryByTestId("welcome-saved")).toBeNull();
    expect(screen.getByTestId("welcome-what").textContent).toMatch(/^Tidepool copies every insert, update and delete/);
    // One sentence.
    expect(screen.getByTestId("welcome-what").textContent!.trim().match(/\.\s/g)).toBeNull();
    expect(screen.getByTestId("welcome-connect").textContent).toBe("Connect your database");
    expect(screen.getByTestId("welcome-demo").textContent).toBe("Try the demo");
    // Where the eye lands: the first thing on the screen, before the connection form.
    const screenArea = screen.getByTestId("screen");
    expect(screenArea.firstElementChild).toBe(welcome);
    expect(welcome.compareDocumentPosition(screen.getByTestId("name")) & Node.DOCUMENT_POSITION_FOLLOWING).toBeTruthy();
  });

  it("gives way to the form with its first field focused on Connect your database", async () => {
    const user = userEvent.setup();
    render(<App />);
    await user.click(await screen.findByTestId("welcome-connect"));
    expect(screen.queryByTestId("welcome")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("name"));
  });

  it("starts the demo from the first screen and goes on to its Setup tab", async () => {
    const demo = profileView({ id: "demo-1", name: "Demo database" });
    answer("startDemo", async () => {
      answer("listProfiles", async () => [demo]);
      return demo;
    });
    const user = userEvent.setup();
    render(<App />);
    await user.click(await screen.findByTestId("welcome-demo"));
    expect(callsOf("startDemo")).toHaveLength(1);
    await waitFor(() => expect(screen.getByTestId("tab-setup").getAttribute("aria-current")).toBe("true"));
    expect(screen.queryByTestId("welcome")).toBeNull();
    // The sidebar's card knows the same demo runs.
    expect(screen.getByTestId("demo-running")).toBeTruthy();
  });

  it("is not shown once a profile is open, nor after New", async () => {
    answer("listProfiles", async () => [profileView({ id: "p1", name: "Prod" })]);
    const user = userEvent.setup();
    render(<App />);
    // With saved connections, the first screen also points at them.
    expect((await screen.findByTestId("welcome-saved")).textContent).toBe("Or open your saved connection on the left.");
    await user.click(await screen.findByTestId("profile-Prod"));
    expect(screen.queryByTestId("welcome")).toBeNull();
    // The tab bar sits outside the scrolling screen, so it never scrolls away.
    expect(screen.getByTestId("screen").contains(screen.getByTestId("tabs"))).toBe(false);
    await user.click(screen.getByTestId("new-profile"));
    expect(screen.queryByTestId("welcome")).toBeNull();
  });
});

describe("New", () => {
  const value = (id: string) => (screen.getByTestId(id) as HTMLInputElement).value;

  it("gives an empty form after a half-typed one, a failed autofill and an open profile", async () => {
    answer("listProfiles", async () => [profileView({ id: "p1", name: "Prod", user: "cdc_role", database: "shop" })]);
    answer("autofill", async () => {
      throw { kind: "InvalidInput", message: "connection string: unknown keyword 'sslmod'" };
    });
    const user = userEvent.setup();
    render(<App />);
    await user.click(await screen.findByTestId("new-profile"));
    await user.type(screen.getByTestId("name"), "Half");
    await user.type(screen.getByTestId("address"), "db.internal:5433");
    await user.type(screen.getByTestId("password"), "typed-pw");
    await user.click(screen.getByTestId("storage-ask"));

    await user.click(screen.getByTestId("new-profile"));
    for (const field of ["name", "address", "user", "password"]) expect(value(field), field).toBe("");
    expect(value("database")).toBe("postgres");
    expect((screen.getByTestId("storage-keychain") as HTMLInputElement).checked).toBe(true);
    expect(document.activeElement).toBe(screen.getByTestId("name"));

    await user.click(screen.getByTestId("autofill-open"));
    await user.type(screen.getByTestId("autofill-input"), "sslmod=require");
    await user.click(screen.getByTestId("autofill-apply"));
    await screen.findByTestId("autofill-error");
    await user.click(screen.getByTestId("new-profile"));
    expect(screen.queryByTestId("autofill-error")).toBeNull();
    expect(screen.queryByTestId("autofill-input")).toBeNull();

    await user.click(screen.getByTestId("profile-Prod"));
    expect(value("user")).toBe("cdc_role");
    await user.click(screen.getByTestId("new-profile"));
    for (const field of ["name", "address", "user", "password"]) expect(value(field), field).toBe("");
    expect(value("database")).toBe("postgres");
    expect(screen.getByTestId("editor-heading").textContent).toBe("New connection");
  });
});

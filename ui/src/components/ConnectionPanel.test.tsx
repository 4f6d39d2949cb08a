import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { ConnectionForm, ServerFacts } from "../lib/types";
import { ConnectionPanel } from "./ConnectionPanel";

// A fake backend: each test says how the next "test_connection" call answers, and the calls are recorded.
const backend = vi.hoisted(() => ({
  calls: [] as unknown[],
  answer: (() => new Promise(() => {})) as (form: unknown) => Promise<unknown>,
}));
vi.mock("../lib/backend", () => ({
  testConnection: (form: unknown) => {
    backend.calls.push(form);
    return backend.answer(form);
  },
}));

const fake = {
  reset: () => {
    backend.calls = [];
    backend.answer = () => new Promise(() => {});
  },
  resolves: (facts: ServerFacts) => (backend.answer = async () => facts),
  rejects: (error: unknown) =>
    (backend.answer = async () => {
      throw error;
    }),
  returns: (promise: Promise<ServerFacts>) => (backend.answer = () => promise),
  calledWith: (form: ConnectionForm) => expect(backend.calls).toEqual([form]),
};

const FACTS: ServerFacts = {
  serverVersion: "15.18 (Debian 15.18-0+deb12u1)",
  serverVersionNum: 150018,
  currentUser: "cdc_role",
  database: "neondb",
  walLevel: "logical",
  replication: { basis: "membership", role: "neon_superuser" },
  tls: true,
  roundTripMs: 1.234,
};

async function fillAndSubmit() {
  const user = userEvent.setup();
  await user.type(screen.getByTestId("address"), "db.example.com:6543");
  await user.type(screen.getByTestId("user"), "cdc_role");
  await user.type(screen.getByTestId("password"), "hunter2");
  await user.clear(screen.getByTestId("database"));
  await user.type(screen.getByTestId("database"), "neondb");
  await user.click(screen.getByText("Advanced options"));
  await user.selectOptions(screen.getByTestId("sslmode"), "require");
  await user.click(screen.getByTestId("test-connection"));
}

describe("ConnectionPanel", () => {
  beforeEach(() => fake.reset());

  it("sends the form's fields and shows the server's facts", async () => {
    fake.resolves(FACTS);
    render(<ConnectionPanel />);
    await fillAndSubmit();
    fake.calledWith({
      address: "db.example.com:6543",
      user: "cdc_role",
      password: "hunter2",
      database: "neondb",
      sslmode: "require",
    });
    expect(await screen.findByTestId("fact-server-version")).toHaveProperty("textContent", FACTS.serverVersion);
    expect(screen.getByTestId("fact-wal-level").textContent).toBe("logical");
    expect(screen.getByTestId("fact-replication").textContent).toContain("member of neon_superuser");
    expect(screen.getByTestId("fact-rtt").textContent).toBe("1.23 ms");
    expect(screen.queryByTestId("connection-error")).toBeNull();
  });

  it("marks a server that is not ready for logical replication", async () => {
    fake.resolves({ ...FACTS, walLevel: "replica", replication: { basis: "none" } });
    render(<ConnectionPanel />);
    await fillAndSubmit();
    const wal = await screen.findByTestId("fact-wal-level");
    expect(wal.className).toBe("warn");
    expect(wal.textContent).toContain("needs wal_level = logical");
    expect(screen.getByTestId("fact-replication").textContent).toContain("cannot replicate");
  });

  it("shows the error's kind and message inline, and never the password", async () => {
    fake.rejects({
      kind: "Authentication",
      message: '127.0.0.1:5432: password authentication failed for user "cdc_role" (SQLSTATE 28P01)',
    });
    render(<ConnectionPanel />);
    await fillAndSubmit();
    const alert = await screen.findByTestId("connection-error");
    expect(screen.getByTestId("connection-error-kind").textContent).toBe("Authentication");
    expect(alert.textContent).toContain("The server refused the login");
    expect(alert.textContent).toContain("password authentication failed");
    expect(document.body.textContent).not.toContain("hunter2");
    expect(document.body.innerHTML).not.toContain("hunter2");
  });

  it("disables the button while a test is running", async () => {
    let resolve: (facts: ServerFacts) => void = () => {};
    fake.returns(new Promise((r) => (resolve = r)));
    render(<ConnectionPanel />);
    await fillAndSubmit();
    const button = screen.getByTestId("test-connection") as HTMLButtonElement;
    expect(button.disabled).toBe(true);
    expect(button.textContent).toBe("Testing…");
    resolve(FACTS);
    await screen.findByTestId("server-facts");
    expect(button.disabled).toBe(false);
  });
});

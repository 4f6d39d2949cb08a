import { render, screen } from "@testing-library/react";
import { describe, expect, it } from "vitest";

import { ServerFactsView } from "./ServerFactsView";

describe("ServerFactsView", () => {
  it("marks a server that is not ready for logical replication", () => {
    render(
      <ServerFactsView
        facts={{
          serverVersion: "15.18",
          serverVersionNum: 150018,
          currentUser: "app",
          database: "db",
          walLevel: "replica",
          replication: { basis: "none" },
          tls: false,
          roundTripMs: 0.5,
        }}
      />,
    );
    const wal = screen.getByTestId("fact-wal-level");
    expect(wal.className).toBe("warn");
    expect(wal.textContent).toContain("needs wal_level = logical");
    expect(screen.getByTestId("fact-replication").textContent).toContain("cannot replicate");
  });
});

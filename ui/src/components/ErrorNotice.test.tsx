import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it } from "vitest";

import { ErrorNotice, splitCode } from "./ErrorNotice";

describe("ErrorNotice", () => {
  it("leads with a sentence and a first step; the kind and SQLSTATE wait behind Details", async () => {
    const error = {
      kind: "Permission" as const,
      message: 'table "orders": permission denied for table orders (SQLSTATE 42501)',
    };
    render(<ErrorNotice error={error} testId="e" />);
    expect(screen.getByTestId("e-title").textContent).toBe("The database role is not allowed to do this.");
    // The engine's message names the object at fault; the code is not part of the sentence.
    expect(screen.getByTestId("e-message").textContent).toBe('table "orders": permission denied for table orders');
    expect(screen.getByTestId("e-step").textContent).toContain("Grant the role");
    // Neither the internal label nor the code is in the visible text until Details is opened.
    const details = screen.getByTestId("e-details").closest("details")!;
    expect(details.open).toBe(false);
    expect(screen.getByTestId("e-kind").textContent).toBe("Permission");
    expect(screen.getByTestId("e-code").textContent).toBe("SQLSTATE 42501");
    expect(details.contains(screen.getByTestId("e-kind"))).toBe(true);
    expect(details.contains(screen.getByTestId("e-code"))).toBe(true);
    await userEvent.setup().click(screen.getByTestId("e-details"));
    expect(details.open).toBe(true);
  });

  it("asks to check a form only where there is one", () => {
    const error = { kind: "InvalidInput" as const, message: "collection: 'a b' has a space" };
    const { unmount } = render(<ErrorNotice error={error} testId="on-screen" />);
    const onScreen = screen.getByTestId("on-screen").textContent!;
    expect(onScreen).not.toMatch(/form/i);
    expect(screen.getByTestId("on-screen-step").textContent).toBe(
      "Change the value the message names where it was set, then try again.",
    );
    unmount();
    render(<ErrorNotice error={error} testId="in-form" place="form" />);
    expect(screen.getByTestId("in-form-step").textContent).toBe("Correct the value the message names, then try again.");
  });

  it("has no code to show when the message carries none", () => {
    render(<ErrorNotice error={{ kind: "Connection", message: "127.0.0.1:1: connection refused" }} testId="c" />);
    expect(screen.queryByTestId("c-code")).toBeNull();
    expect(screen.getByTestId("c-message").textContent).toBe("127.0.0.1:1: connection refused");
    expect(splitCode("x (SQLSTATE 28P01) y")).toEqual({ text: "x y", code: "28P01" });
  });
});

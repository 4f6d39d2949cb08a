import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { SettingsPanel } from "./SettingsPanel";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands(["keychainStatus", "neonKeyStatus", "setNeonKey", "removeNeonKey"]),
);

beforeEach(() => {
  resetBackend();
});

describe("SettingsPanel", () => {
  it("says where secrets are kept, or why the keychain cannot be used", async () => {
    answer("keychainStatus", async () => ({ state: "available", backend: "Secret Service" }));
    answer("neonKeyStatus", async () => ({ stored: false }));
    const { unmount } = render(<SettingsPanel />);
    await waitFor(() => expect(screen.getByTestId("keychain-status").textContent).toContain("Secret Service"));
    expect(screen.getByTestId("keychain-status").textContent).toContain("nowhere else");
    expect(screen.getByTestId("neon-key-status").textContent).toBe("No key stored.");
    expect(screen.queryByTestId("remove-neon-key")).toBeNull();
    unmount();

    answer("keychainStatus", async () => ({ state: "unavailable", reason: "no Secret Service on the session bus" }));
    render(<SettingsPanel />);
    await waitFor(() =>
      expect(screen.getByTestId("keychain-status").textContent).toBe(
        "Unavailable: no Secret Service on the session bus",
      ),
    );
  });

  it("stores a typed key, clears the field and never shows the key again", async () => {
    answer("keychainStatus", async () => ({ state: "available", backend: "Secret Service" }));
    answer("neonKeyStatus", async () => ({ stored: false }));
    answer("setNeonKey", async () => ({ stored: true }));
    const user = userEvent.setup();
    render(<SettingsPanel />);
    const field = screen.getByTestId("neon-key") as HTMLInputElement;
    expect(field.type).toBe("password");
    await user.type(field, "napi_secret123");
    await user.click(screen.getByTestId("save-neon-key"));
    await waitFor(() => expect(screen.getByTestId("neon-key-status").textContent).toBe("A key is stored in the keychain."));
    expect(callsOf("setNeonKey")).toEqual([["napi_secret123"]]);
    expect(field.value).toBe("");
    expect(document.body.textContent).not.toContain("napi_secret123");

    answer("removeNeonKey", async () => ({ stored: false }));
    await user.click(screen.getByTestId("remove-neon-key"));
    await waitFor(() => expect(screen.getByTestId("neon-key-status").textContent).toBe("No key stored."));
    expect(callsOf("removeNeonKey")).toHaveLength(1);
  });

  it("shows a refused key's error and keeps what was typed for correcting", async () => {
    answer("keychainStatus", async () => ({ state: "available", backend: "Secret Service" }));
    answer("neonKeyStatus", async () => ({ stored: false }));
    answer("setNeonKey", async () => {
      throw { kind: "Keychain", message: "the keychain is locked" };
    });
    const user = userEvent.setup();
    render(<SettingsPanel />);
    await user.type(screen.getByTestId("neon-key"), "napi_x");
    await user.click(screen.getByTestId("save-neon-key"));
    await waitFor(() => expect(screen.getByTestId("settings-error")).toBeTruthy());
    expect(screen.getByTestId("settings-error").textContent).toContain("the keychain is locked");
    expect((screen.getByTestId("neon-key") as HTMLInputElement).value).toBe("napi_x");
    expect(screen.getByTestId("neon-key-status").textContent).toBe("No key stored.");
  });
});

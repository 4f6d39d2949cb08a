import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import type { ProfileView, ServerFacts } from "../lib/types";
import { ProfileEditor } from "./ProfileEditor";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";

vi.mock("../lib/backend", async () => (await import("../test/fakeBackend")).commands(["autofill", "saveProfile", "testConnection", "deleteProfile", "sshHostKey"]));

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

const SAVED: ProfileView = {
  id: "abc123",
  name: "Prod",
  host: "db.example.com",
  port: 6543,
  user: "cdc_role",
  database: "neondb",
  sslmode: "require",
  channelBinding: "prefer",
  publication: "tidepool_publication",
  slot: "tidepool_slot",
  applicationName: "tidepool",
  password: "keychain",
  address: "db.example.com:6543",
  secret: "inKeychain",
  encrypted: true,
};

const POOLED = "ep-cool-darkness-123456-pooler.us-east-2.aws.neon.tech";
const DIRECT = "ep-cool-darkness-123456.us-east-2.aws.neon.tech";

describe("ProfileEditor", () => {
  beforeEach(() => {
    resetBackend();
  });

  it("autofills from a URL, flags a Neon pooled host and switches to the direct host", async () => {
    answer("autofill", async () => ({
      draft: {
        name: "",
        address: `${POOLED}:5432`,
        user: "neondb_owner",
        database: "neondb",
        sslmode: "require",
        sslrootcert: null,
        options: null,
        channelBinding: "prefer",
        publication: null,
        slot: null,
        applicationName: "tidepool",
        passwordStorage: "keychain",
        encryptStore: null,
        sshAddress: null,
        sshHostKey: null,
      },
      password: "AbC123dEf",
      advice: [{ kind: "neonPooler", pooledHost: POOLED, directHost: DIRECT }],
    }));
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("autofill-open"));
    await user.type(screen.getByTestId("autofill-input"), "postgresql://x");
    await user.click(screen.getByTestId("autofill-apply"));

    expect(callsOf("autofill")).toEqual([["postgresql://x"]]);
    expect((screen.getByTestId("address") as HTMLInputElement).value).toBe(`${POOLED}:5432`);
    expect((screen.getByTestId("user") as HTMLInputElement).value).toBe("neondb_owner");
    expect((screen.getByTestId("password") as HTMLInputElement).value).toBe("AbC123dEf");
    expect((screen.getByTestId("sslmode") as HTMLSelectElement).value).toBe("require");
    expect(document.body.innerHTML).not.toContain("AbC123dEf");

    await user.click(screen.getByTestId("switch-direct-host"));
    expect((screen.getByTestId("address") as HTMLInputElement).value).toBe(`${DIRECT}:5432`);
    expect(screen.queryByTestId("pooler-warning")).toBeNull();
  });

  it("saves the fields with the typed password, then forgets the password", async () => {
    answer("saveProfile", async () => SAVED);
    const onSaved = vi.fn();
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={onSaved} onDeleted={() => {}} />);
    await user.type(screen.getByTestId("name"), "Prod");
    await user.type(screen.getByTestId("address"), "db.example.com:6543");
    await user.type(screen.getByTestId("user"), "cdc_role");
    await user.type(screen.getByTestId("password"), "hunter2");
    await user.click(screen.getByTestId("save-profile"));

    await waitFor(() => expect(onSaved).toHaveBeenCalledWith(SAVED));
    const [[id, draft, password, check]] = callsOf("saveProfile");
    expect(id).toBeNull();
    // Save tests first: the engine stores nothing that does not log in.
    expect(check).toBe("testFirst");
    expect(screen.getByTestId("saved").textContent).toBe("Connection tested and saved.");
    expect(draft).toMatchObject({
      name: "Prod",
      address: "db.example.com:6543",
      user: "cdc_role",
      database: "postgres",
      passwordStorage: "keychain",
      encryptStore: true,
    });
    expect(draft).not.toHaveProperty("password");
    expect(password).toBe("hunter2");
    expect((screen.getByTestId("password") as HTMLInputElement).value).toBe("");
  });

  it("tests a saved profile with the keychain's password when none is typed", async () => {
    answer("testConnection", async () => FACTS);
    const user = userEvent.setup();
    render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={() => {}} />);
    expect(screen.getByText(/Stored in the OS keychain. Leave empty to keep it/)).toBeTruthy();
    await user.click(screen.getByTestId("test-connection"));
    expect(await screen.findByTestId("fact-server-version")).toHaveProperty("textContent", FACTS.serverVersion);
    const [[id, , password]] = callsOf("testConnection") as [[string, unknown, string]];
    expect(id).toBe("abc123");
    expect(password).toBe("");
  });

  it("shows an error's kind and offers to ask each time when the keychain fails on save", async () => {
    answer("saveProfile", async () => {
      throw { kind: "Keychain", message: "the OS keychain could not be opened (no D-Bus session)" };
    });
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("save-profile"));
    expect((await screen.findByTestId("connection-error-kind")).textContent).toBe("Keychain");
    expect(screen.getByTestId("connection-error-title").textContent).toBe("The OS keychain could not be used.");
    expect(screen.getByTestId("connection-error-step").textContent).toContain("Unlock the OS keychain");
    await user.click(screen.getByTestId("use-ask-each-time"));
    expect((screen.getByTestId("storage-ask") as HTMLInputElement).checked).toBe(true);
  });

  it("shows an autofill error right under the URL and marks the field, not below the form", async () => {
    answer("autofill", async () => {
      throw { kind: "InvalidInput", message: "connection string: unknown keyword 'sslmod'" };
    });
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("autofill-open"));
    const input = screen.getByTestId("autofill-input");
    await user.type(input, "sslmod=require");
    await user.click(screen.getByTestId("autofill-apply"));
    const error = await screen.findByTestId("autofill-error");
    // Inside the autofill box, right after the field (its hint in between), not in the form's result area.
    expect(input.closest(".autofill")!.contains(error)).toBe(true);
    expect(input.compareDocumentPosition(error) & Node.DOCUMENT_POSITION_FOLLOWING).toBeTruthy();
    expect(screen.getByTestId("autofill-error-message").textContent).toContain("sslmod");
    expect(screen.queryByTestId("connection-error")).toBeNull();
    expect(input.getAttribute("aria-invalid")).toBe("true");
    expect(input.getAttribute("aria-describedby")!.split(" ")).toContain(error.id);
    // Editing the URL clears the mark.
    await user.type(input, "e");
    expect(screen.queryByTestId("autofill-error")).toBeNull();
    expect(input.getAttribute("aria-invalid")).toBe("false");
  });

  it("marks the field a failed test is about and brings the error into view", async () => {
    const scrolled: Element[] = [];
    const before = Element.prototype.scrollIntoView;
    Element.prototype.scrollIntoView = function (this: Element) {
      scrolled.push(this);
    };
    try {
      answer("testConnection", async () => {
        throw { kind: "Authentication", message: 'password authentication failed for user "cdc_role" (SQLSTATE 28P01)' };
      });
      const user = userEvent.setup();
      render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={() => {}} />);
      await user.click(screen.getByTestId("test-connection"));
      const error = await screen.findByTestId("connection-error");
      const password = screen.getByTestId("password");
      expect(password.getAttribute("aria-invalid")).toBe("true");
      expect(password.getAttribute("aria-describedby")!.split(" ")).toEqual(["password-error", error.id]);
      expect(screen.getByTestId("password-error").textContent).toBe("This user and password did not log in.");
      expect(screen.getByTestId("address").getAttribute("aria-invalid")).toBeNull();
      expect(scrolled.some((element) => element.contains(error))).toBe(true);
    } finally {
      Element.prototype.scrollIntoView = before;
    }
  });

  it("marks the address when the server cannot be reached, and no field for other kinds", async () => {
    let failure = { kind: "Connection", message: "127.0.0.1:1: connection refused" };
    answer("testConnection", async () => {
      throw failure;
    });
    const user = userEvent.setup();
    render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("test-connection"));
    await screen.findByTestId("connection-error");
    expect(screen.getByTestId("address").getAttribute("aria-invalid")).toBe("true");
    expect(screen.getByTestId("password").getAttribute("aria-invalid")).toBeNull();
    failure = { kind: "NotFound", message: 'database "nope" does not exist' };
    await user.click(screen.getByTestId("test-connection"));
    await waitFor(() => expect(screen.getByTestId("connection-error-message").textContent).toContain("nope"));
    for (const field of ["address", "password", "database"]) {
      expect(screen.getByTestId(field).getAttribute("aria-invalid"), field).toBeNull();
    }
  });

  it("deletes only after confirmation and hands on what was deleted", async () => {
    const removed = {
      profile: "Prod",
      profileRemoved: true,
      store: "/data/stores/abc123",
      keychainEntries: ["database password", "store key"],
      slotDropped: null,
    };
    answer("deleteProfile", async () => removed);
    const onDeleted = vi.fn();
    const user = userEvent.setup();
    render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={onDeleted} />);
    await user.click(screen.getByTestId("delete-profile"));
    expect(callsOf("deleteProfile")).toEqual([]);
    expect(screen.getByText(/its captured rows on this machine and its keychain entries/)).toBeTruthy();
    await user.click(screen.getByTestId("confirm-delete"));
    await waitFor(() => expect(onDeleted).toHaveBeenCalledWith(removed));
    expect(callsOf("deleteProfile")).toEqual([["abc123"]]);
  });

  it("says why a delete failed without marking a field or offering an untested save", async () => {
    answer("deleteProfile", async () => {
      throw { kind: "Connection", message: "db.example.com:6543: connection refused while dropping the slot" };
    });
    const onDeleted = vi.fn();
    const user = userEvent.setup();
    render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={onDeleted} />);
    await user.click(screen.getByTestId("delete-profile"));
    await user.click(screen.getByTestId("confirm-delete"));
    expect((await screen.findByTestId("connection-error-message")).textContent).toContain("connection refused");
    // The form's address did not fail: the delete did.
    expect(screen.getByTestId("address").getAttribute("aria-invalid")).toBeNull();
    expect(screen.queryByTestId("address-error")).toBeNull();
    expect(screen.queryByTestId("save-untested")).toBeNull();
    expect(onDeleted).not.toHaveBeenCalled();
  });

  it("saves a new profile with an unencrypted store only when the box is cleared", async () => {
    answer("saveProfile", async () => SAVED);
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    const box = screen.getByTestId("encrypt-store") as HTMLInputElement;
    expect(box.checked).toBe(true);
    await user.click(box);
    await user.click(screen.getByTestId("save-profile"));
    const [[, draft]] = callsOf("saveProfile");
    expect(draft).toMatchObject({ encryptStore: false });
  });

  it("disables the buttons while a test runs", async () => {
    let resolve: (facts: ServerFacts) => void = () => {};
    answer("testConnection", () => new Promise((r) => (resolve = r)));
    const user = userEvent.setup();
    render(<ProfileEditor profile={SAVED} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("test-connection"));
    const button = screen.getByTestId("test-connection") as HTMLButtonElement;
    expect(button.disabled).toBe(true);
    expect(button.textContent).toBe("Testing…");
    resolve(FACTS);
    await screen.findByTestId("server-facts");
    expect(button.disabled).toBe(false);
  });

  it("makes Test connection the primary action and Save the second", () => {
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    const test = screen.getByTestId("test-connection");
    const save = screen.getByTestId("save-profile");
    expect(test.className).toBe("");
    expect(save.className).toBe("secondary");
    expect(test.compareDocumentPosition(save) & Node.DOCUMENT_POSITION_FOLLOWING).toBeTruthy();
    expect(save.getAttribute("aria-describedby")).toBe("save-hint");
  });

  it("refuses a save whose test fails, at the field, and saves it only when told not to test", async () => {
    let saves = 0;
    answer("saveProfile", async (_id, _draft, _password, check) => {
      saves += 1;
      if (check === "testFirst") {
        throw { kind: "Authentication", message: 'password authentication failed for user "cdc_role" (SQLSTATE 28P01)' };
      }
      return { ...SAVED, untested: true };
    });
    const onSaved = vi.fn();
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={onSaved} onDeleted={() => {}} />);
    await user.type(screen.getByTestId("name"), "Prod");
    await user.type(screen.getByTestId("password"), "wrong");
    await user.click(screen.getByTestId("save-profile"));

    expect((await screen.findByTestId("password-error")).textContent).toBe(
      "This user and password did not log in. Nothing was saved.",
    );
    expect(screen.getByTestId("password").getAttribute("aria-invalid")).toBe("true");
    expect(screen.queryByTestId("saved")).toBeNull();
    expect(onSaved).not.toHaveBeenCalled();
    // The typed password stays for a retry or an explicit save.
    expect((screen.getByTestId("password") as HTMLInputElement).value).toBe("wrong");

    await user.click(screen.getByTestId("save-untested"));
    await waitFor(() => expect(onSaved).toHaveBeenCalledWith({ ...SAVED, untested: true }));
    expect(saves).toBe(2);
    expect(callsOf("saveProfile")[1].slice(2)).toEqual(["wrong", "withoutTesting"]);
    const saved = screen.getByTestId("saved");
    expect(saved.getAttribute("data-tested")).toBe("false");
    expect(saved.className).toBe("warning");
    expect(saved.textContent).toMatch(/^Saved, not tested/);
  });

  it("offers no untested save for the form's own mistakes", async () => {
    answer("saveProfile", async () => {
      throw { kind: "InvalidInput", message: "name: is empty" };
    });
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    await user.click(screen.getByTestId("save-profile"));
    await screen.findByTestId("connection-error");
    expect(screen.queryByTestId("save-untested")).toBeNull();
  });

  it("says a profile saved without testing has not logged in", () => {
    render(<ProfileEditor profile={{ ...SAVED, untested: true }} onSaved={() => {}} onDeleted={() => {}} />);
    expect(screen.getByTestId("untested-note").textContent).toMatch(/^Saved without testing/);
  });

  it("sends an SSH key once, shows the bastion's host key on first use and retries with it trusted", async () => {
    const KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----";
    const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl";
    let tests = 0;
    answer("testConnection", async () => {
      tests += 1;
      if (tests === 1) throw { kind: "HostKey", message: "127.0.0.1:2222: the SSH server's host key is not accepted yet" };
      return FACTS;
    });
    answer("sshHostKey", async () => ({ target: "127.0.0.1:2222", openssh: HOST_KEY, fingerprint: "SHA256:abcDEF" }));
    const user = userEvent.setup();
    render(<ProfileEditor profile={null} onSaved={() => {}} onDeleted={() => {}} />);
    await user.type(screen.getByTestId("address"), "db.internal:5432");
    await user.click(screen.getByTestId("ssh-enable"));
    await user.type(screen.getByTestId("ssh-address"), "ssh://ops@127.0.0.1:2222");
    await user.click(screen.getByTestId("ssh-key"));
    await user.paste(KEY);
    await user.type(screen.getByTestId("ssh-passphrase"), "pass phrase");
    await user.click(screen.getByTestId("test-connection"));

    await screen.findByTestId("ssh-show-host-key");
    const first = callsOf("testConnection")[0][1];
    expect(first).toMatchObject({ sshAddress: "ssh://ops@127.0.0.1:2222", sshHostKey: null, sshKey: KEY, sshPassphrase: "pass phrase" });
    // The key and passphrase never reach the page's markup.
    expect(document.body.innerHTML).not.toContain("b3BlbnNzaC1rZXktdjEAAAAA");
    expect(document.body.innerHTML).not.toContain("pass phrase");

    await user.click(screen.getByTestId("ssh-show-host-key"));
    expect(callsOf("sshHostKey")).toEqual([["ssh://ops@127.0.0.1:2222"]]);
    expect((await screen.findByTestId("ssh-fingerprint")).textContent).toBe("SHA256:abcDEF");
    await user.click(screen.getByTestId("ssh-trust"));

    await screen.findByTestId("server-facts");
    const second = callsOf("testConnection")[1][1];
    expect(second).toMatchObject({ sshHostKey: HOST_KEY, sshKey: KEY });
    expect(screen.getByTestId("ssh-host-key-state").textContent).toContain("ssh-ed25519");
  });
});

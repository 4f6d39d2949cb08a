import { render, screen } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { describe, expect, it, vi } from "vitest";

import type { ProfileView } from "../lib/types";
import { ProfileList } from "./ProfileList";

const profile = (name: string, secret: ProfileView["secret"]): ProfileView => ({
  id: name,
  name,
  host: "h",
  port: 5432,
  user: "u",
  database: "d",
  sslmode: "prefer",
  channelBinding: "prefer",
  publication: "p",
  slot: "s",
  applicationName: "tidepool",
  password: secret === "askEachTime" ? "askEachTime" : "keychain",
  address: "h:5432",
  secret,
  encrypted: true,
});

describe("ProfileList", () => {
  it("shows where each profile's password stands and selects on click", async () => {
    const onSelect = vi.fn();
    render(
      <ProfileList
        profiles={[profile("A", "inKeychain"), profile("B", "missingFromKeychain"), profile("C", "askEachTime")]}
        selected="A"
        onSelect={onSelect}
        onNew={() => {}}
      />,
    );
    expect(screen.getByTestId("secret-A").textContent).toBe("Password in keychain");
    expect(screen.getByTestId("secret-B").textContent).toBe("Password missing from keychain");
    expect(screen.getByTestId("secret-C").textContent).toBe("Asks for the password");
    expect(screen.getByTestId("profile-A").getAttribute("aria-current")).toBe("true");
    await userEvent.setup().click(screen.getByTestId("profile-B"));
    expect(onSelect).toHaveBeenCalledWith("B");
  });

  it("does not show a profile saved without testing as good", () => {
    render(
      <ProfileList profiles={[{ ...profile("U", "inKeychain"), untested: true }]} selected={null} onSelect={() => {}} onNew={() => {}} />,
    );
    const label = screen.getByTestId("secret-U");
    expect(label.textContent).toBe("Password in keychain, not tested");
    expect(label.getAttribute("data-tested")).toBe("false");
    expect(label.classList.contains("inKeychain")).toBe(false);
  });

  it("shows the bastion a profile goes through and whether its host key is accepted", () => {
    render(
      <ProfileList
        profiles={[
          { ...profile("T", "inKeychain"), ssh: { address: "ssh://ops@bastion:22", hostKey: "ssh-ed25519 AAAA" } },
          { ...profile("N", "inKeychain"), ssh: { address: "ssh://ops@other:22" } },
          profile("D", "inKeychain"),
        ]}
        selected={null}
        onSelect={() => {}}
        onNew={() => {}}
      />,
    );
    expect(screen.getByTestId("ssh-T").textContent).toBe("via ssh://ops@bastion:22");
    expect(screen.getByTestId("ssh-N").textContent).toBe("via ssh://ops@other:22, host key not accepted yet");
    expect(screen.queryByTestId("ssh-D")).toBeNull();
  });

  it("explains the empty state", () => {
    render(<ProfileList profiles={[]} selected={null} onSelect={() => {}} onNew={() => {}} />);
    expect(screen.getByTestId("no-profiles").textContent).toContain("Autofill with URL");
  });
});

import { render, screen, waitFor } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { beforeEach, describe, expect, it, vi } from "vitest";

import { NeonSection } from "./NeonSection";
import { answer, callsOf, resetBackend } from "../test/fakeBackend";
import { profileView } from "../test/fixtures";

vi.mock("../lib/backend", async () =>
  (await import("../test/fakeBackend")).commands([
    "neonProjects",
    "neonBranches",
    "neonLocate",
    "linkNeon",
    "previewAction",
    "runFix",
  ]),
);

const NEON_HOST = "ep-cool-darkness-123456.us-east-2.aws.neon.tech";
/** What every Neon API action needs, as the engine says it (`setup::Action::needs`). */
const NEON_NEEDS = "a Neon API key with access to the project (kept in the OS keychain)";
const LINK = { projectId: "hidden-cell-763301", branchId: "br-dev" };

beforeEach(() => {
  resetBackend();
});

describe("NeonSection", () => {
  it("offers only a link button for a host that is not Neon's", () => {
    render(<NeonSection profile={profileView()} onLinked={() => {}} onChanged={() => {}} />);
    expect(screen.getByTestId("neon-open")).toBeTruthy();
    expect(screen.queryByTestId("neon-section")).toBeNull();
    expect(callsOf("neonProjects")).toEqual([]);
  });

  it("links a Neon host to the project and branch whose endpoint serves it", async () => {
    answer("neonProjects", async () => [
      { id: "other-1", name: "other", regionId: "aws-eu-central-1" },
      { id: LINK.projectId, name: "shop", regionId: "aws-us-east-2" },
    ]);
    answer("neonLocate", async () => LINK);
    answer("neonBranches", async () => [
      { id: "br-main", name: "main", default: true },
      { id: "br-dev", name: "dev", default: false },
    ]);
    const linked = profileView({ host: NEON_HOST, neon: LINK });
    answer("linkNeon", async () => linked);
    const onLinked = vi.fn();
    const user = userEvent.setup();
    render(<NeonSection profile={profileView({ host: NEON_HOST })} onLinked={onLinked} onChanged={() => {}} />);
    await waitFor(() => expect((screen.getByTestId("neon-branch") as HTMLSelectElement).value).toBe("br-dev"));
    expect((screen.getByTestId("neon-project") as HTMLSelectElement).value).toBe(LINK.projectId);
    await user.click(screen.getByTestId("neon-link"));
    await waitFor(() => expect(onLinked).toHaveBeenCalledWith(linked));
    expect(callsOf("linkNeon")).toEqual([["p1", LINK]]);
  });

  it("says where to put the API key when there is none", async () => {
    answer("neonProjects", async () => {
      throw { kind: "Keychain", message: "no Neon API key is stored: add one in Settings" };
    });
    render(<NeonSection profile={profileView({ host: NEON_HOST })} onLinked={() => {}} onChanged={() => {}} />);
    expect((await screen.findByTestId("neon-error-kind")).textContent).toBe("Keychain");
  });

  it("previews a password reset and sends it only after Run", async () => {
    const reset = { action: "neonResetPassword", ...LINK, role: "cdc_role" };
    answer("previewAction", async (action) => ({
      action,
      needs: NEON_NEEDS,
      preview: ["POST /api/v2/projects/hidden-cell-763301/branches/br-dev/roles/cdc_role/reset_password"],
      warning: "Every client that uses the role's current password stops connecting",
    }));
    answer("runFix", async () => undefined);
    const onChanged = vi.fn();
    const user = userEvent.setup();
    render(<NeonSection profile={profileView({ neon: LINK })} onLinked={() => {}} onChanged={onChanged} />);
    expect(screen.getByTestId("neon-linked").textContent).toContain(LINK.projectId);
    await user.click(screen.getByTestId("neon-action-reset"));
    expect((await screen.findByTestId("neon-preview")).textContent).toContain("/reset_password");
    expect(screen.getByTestId("neon-warning").textContent).toContain("stops connecting");
    expect(callsOf("previewAction")).toEqual([[reset]]);
    expect(callsOf("runFix")).toEqual([]);
    await user.click(screen.getByTestId("neon-run"));
    await screen.findByTestId("neon-done");
    expect(callsOf("runFix")).toEqual([["p1", reset]]);
    expect(onChanged).toHaveBeenCalled();
  });

  it("creates a role with the name typed", async () => {
    answer("previewAction", async (action) => ({ action, preview: ["POST …/roles"], warning: null, needs: NEON_NEEDS }));
    const user = userEvent.setup();
    render(<NeonSection profile={profileView({ neon: LINK })} onLinked={() => {}} onChanged={() => {}} />);
    await user.clear(screen.getByTestId("neon-role-name"));
    await user.type(screen.getByTestId("neon-role-name"), "cdc role");
    await user.click(screen.getByTestId("neon-action-role"));
    await screen.findByTestId("neon-preview");
    expect(callsOf("previewAction")).toEqual([[{ action: "neonCreateRole", ...LINK, role: "cdc role" }]]);
  });

  it("moves the focus into a request's preview, and Escape closes it back onto its button", async () => {
    answer("previewAction", async (action) => ({ action, preview: ["POST …/reset_password"], warning: null, needs: NEON_NEEDS }));
    const user = userEvent.setup();
    render(<NeonSection profile={profileView({ neon: LINK })} onLinked={() => {}} onChanged={() => {}} />);
    await user.click(screen.getByTestId("neon-action-reset"));
    const preview = await screen.findByTestId("neon-confirm");
    expect(document.activeElement).toBe(preview);
    await user.keyboard("{Escape}");
    expect(screen.queryByTestId("neon-confirm")).toBeNull();
    expect(document.activeElement).toBe(screen.getByTestId("neon-action-reset"));
    expect(callsOf("runFix")).toEqual([]);
  });
});

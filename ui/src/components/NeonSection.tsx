import { useEffect, useRef, useState } from "react";

import * as backend from "../lib/backend";
import type { BackendError, Fix, NeonBranch, NeonProject, ProfileView, SetupAction } from "../lib/types";
import { isNeonHost } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";
import { PreviewBox } from "./PreviewBox";

/**
 * The Neon part of Setup: link the profile to its Neon project and branch, then fix things through
 * Neon's API — turn on logical replication, create a replication role, reveal or reset the profile's
 * password. Each action shows the exact API request (and what cannot be undone) before "Run"; any
 * password Neon returns goes straight to the OS keychain and is never shown.
 */
export function NeonSection({
  profile,
  onLinked,
  onChanged,
}: {
  profile: ProfileView;
  onLinked: (profile: ProfileView) => void;
  onChanged: () => void;
}) {
  const relevant = isNeonHost(profile.host) || profile.neon !== undefined;
  const [picking, setPicking] = useState(relevant && profile.neon === undefined);

  if (!relevant && !picking) {
    return (
      <div className="neon-offer">
        <button type="button" className="secondary" data-testid="neon-open" onClick={() => setPicking(true)}>
          Link to a Neon project…
        </button>{" "}
        <span className="muted">For a Neon database behind another host name.</span>
      </div>
    );
  }

  return (
    <section className="neon" data-testid="neon-section" aria-labelledby="neon-heading">
      <h3 id="neon-heading">Neon</h3>
      {profile.neon && !picking ? (
        <NeonActions profile={profile} onChanged={onChanged} onRelink={() => setPicking(true)} onUnlinked={onLinked} />
      ) : (
        <NeonPicker
          profile={profile}
          onLinked={(view) => {
            setPicking(false);
            onLinked(view);
          }}
        />
      )}
    </section>
  );
}

/** Project and branch pickers, preselected from the endpoint that serves the profile's host. */
function NeonPicker({ profile, onLinked }: { profile: ProfileView; onLinked: (profile: ProfileView) => void }) {
  const [projects, setProjects] = useState<NeonProject[] | null>(null);
  const [branches, setBranches] = useState<NeonBranch[] | null>(null);
  const [project, setProject] = useState(profile.neon?.projectId ?? "");
  const [branch, setBranch] = useState(profile.neon?.branchId ?? "");
  const { busy, error, setError, run } = useAction();

  useEffect(() => {
    let live = true;
    (async () => {
      try {
        const found = await backend.neonProjects();
        if (!live) return;
        setProjects(found);
        if (!profile.neon) {
          const located = await backend.neonLocate(profile.id);
          if (live && located) {
            setProject(located.projectId);
            setBranch(located.branchId);
          }
        }
      } catch (e) {
        if (live) setError(e as BackendError);
      }
    })();
    return () => {
      live = false;
    };
  }, [profile.id, profile.neon, setError]);

  useEffect(() => {
    if (!project) return;
    let live = true;
    setBranches(null);
    backend.neonBranches(project).then(
      (found) => {
        if (!live) return;
        setBranches(found);
        setBranch((current) =>
          found.some((b) => b.id === current) ? current : (found.find((b) => b.default) ?? found[0])?.id ?? "",
        );
      },
      (e) => live && setError(e as BackendError),
    );
    return () => {
      live = false;
    };
  }, [project, setError]);

  async function link() {
    const linked = await run(() => backend.linkNeon(profile.id, { projectId: project, branchId: branch }));
    if (linked) onLinked(linked);
  }

  return (
    <div className="neon-picker">
      <p className="muted">
        Link this profile to its Neon project and branch to fix settings through the Neon API (with the API key
        from Settings).
      </p>
      {error && <ErrorNotice error={error} testId="neon-error" />}
      {projects === null && !error && <p data-testid="neon-loading">Loading projects…</p>}
      {projects !== null && projects.length === 0 && <p data-testid="neon-empty">The API key sees no projects.</p>}
      {projects !== null && projects.length > 0 && (
        <div className="row">
          <label>
            Project{" "}
            <select data-testid="neon-project" value={project} onChange={(e) => setProject(e.target.value)}>
              <option value="">Choose…</option>
              {projects.map((p) => (
                <option key={p.id} value={p.id}>
                  {p.name} ({p.id})
                </option>
              ))}
            </select>
          </label>{" "}
          <label>
            Branch{" "}
            <select
              data-testid="neon-branch"
              value={branch}
              disabled={!branches}
              onChange={(e) => setBranch(e.target.value)}
            >
              {(branches ?? []).map((b) => (
                <option key={b.id} value={b.id}>
                  {b.name}
                  {b.default ? " (default)" : ""}
                </option>
              ))}
            </select>
          </label>{" "}
          <button type="button" data-testid="neon-link" disabled={!project || !branch || busy} onClick={() => void link()}>
            Link
          </button>
        </div>
      )}
    </div>
  );
}

type Kind = "enable" | "role" | "reveal" | "reset";

/** The Neon fixes for a linked profile, each previewed before it runs. */
function NeonActions({
  profile,
  onChanged,
  onRelink,
  onUnlinked,
}: {
  profile: ProfileView;
  onChanged: () => void;
  onRelink: () => void;
  onUnlinked: (profile: ProfileView) => void;
}) {
  const link = profile.neon!;
  const [role, setRole] = useState("tidepool_cdc");
  const [pending, setPending] = useState<{ kind: Kind; fix: Fix } | null>(null);
  const [done, setDone] = useState<string | null>(null);
  const { busy, error, setError, run: runCommand } = useAction();
  // The buttons that open a preview, to give the focus back to when it closes (Escape or Cancel).
  const openers = useRef(new Map<Kind, HTMLButtonElement>());
  const opener = (kind: Kind) => (element: HTMLButtonElement | null) => {
    if (element) openers.current.set(kind, element);
    else openers.current.delete(kind);
  };
  const closePreview = () => {
    const kind = pending?.kind;
    setPending(null);
    if (kind) openers.current.get(kind)?.focus();
  };

  const actionOf = (kind: Kind): SetupAction => {
    const at = { projectId: link.projectId, branchId: link.branchId };
    switch (kind) {
      case "enable":
        return { action: "neonEnableLogicalReplication", projectId: link.projectId };
      case "role":
        return { action: "neonCreateRole", ...at, role: role.trim() };
      case "reveal":
        return { action: "neonRevealPassword", ...at, role: profile.user };
      case "reset":
        return { action: "neonResetPassword", ...at, role: profile.user };
    }
  };

  async function preview(kind: Kind) {
    setError(null);
    setDone(null);
    try {
      setPending({ kind, fix: await backend.previewAction(actionOf(kind)) });
    } catch (e) {
      setError(e as BackendError);
    }
  }

  async function run() {
    if (!pending) return;
    const { kind, fix } = pending;
    const ran = await runCommand(async () => {
      await backend.runFix(profile.id, fix.action);
      return true;
    });
    if (!ran) return;
    setDone(DONE[kind]);
    setPending(null);
    onChanged();
  }

  async function unlink() {
    try {
      onUnlinked(await backend.linkNeon(profile.id, null));
    } catch (e) {
      setError(e as BackendError);
    }
  }

  return (
    <div className="neon-actions">
      <p data-testid="neon-linked">
        Linked to project <code>{link.projectId}</code>, branch <code>{link.branchId}</code>.{" "}
        <button type="button" className="link" data-testid="neon-relink" onClick={onRelink}>
          Change
        </button>{" "}
        <button type="button" className="link" data-testid="neon-unlink" onClick={() => void unlink()}>
          Unlink
        </button>
      </p>
      <div className="row">
        <button type="button" data-testid="neon-action-enable" ref={opener("enable")} onClick={() => void preview("enable")}>
          Enable logical replication…
        </button>
        <span className="row">
          <input
            aria-label="New role"
            data-testid="neon-role-name"
            value={role}
            onChange={(e) => setRole(e.target.value)}
            size={14}
          />
          <button type="button" data-testid="neon-action-role" ref={opener("role")} disabled={!role.trim()} onClick={() => void preview("role")}>
            Create replication role…
          </button>
        </span>
        <button type="button" className="secondary" data-testid="neon-action-reveal" ref={opener("reveal")} onClick={() => void preview("reveal")}>
          Get {profile.user}'s password into the keychain…
        </button>
        <button type="button" className="secondary" data-testid="neon-action-reset" ref={opener("reset")} onClick={() => void preview("reset")}>
          Reset {profile.user}'s password…
        </button>
      </div>
      {pending && (
        <PreviewBox
          key={pending.kind}
          className="fix"
          testId="neon-confirm"
          label={`Preview: ${DONE_TITLE[pending.kind]}`}
          onClose={closePreview}
        >
          <p>This will send:</p>
          <pre data-testid="neon-preview">{pending.fix.preview.join("\n")}</pre>
          {pending.fix.warning && (
            <p className="note" data-testid="neon-warning">
              {pending.fix.warning}
            </p>
          )}
          <button type="button" data-testid="neon-run" disabled={busy} onClick={() => void run()}>
            {busy ? "Running…" : "Run"}
          </button>{" "}
          <button type="button" className="secondary" data-testid="neon-cancel" onClick={closePreview}>
            Cancel
          </button>
        </PreviewBox>
      )}
      {done && (
        <p className="ok" data-testid="neon-done">
          {done}
        </p>
      )}
      {error && <ErrorNotice error={error} testId="neon-error" />}
    </div>
  );
}

/** What each preview is for, for screen readers. */
const DONE_TITLE: Record<Kind, string> = {
  enable: "enable logical replication",
  role: "create a replication role",
  reveal: "get the password into the keychain",
  reset: "reset the password",
};

const DONE: Record<Kind, string> = {
  enable: "Logical replication is on for the project; its computes restarted.",
  role: "The role was created; its password is in the keychain with a new profile for it.",
  reveal: "The password is in the keychain.",
  reset: "The password was reset; the new one is in the keychain.",
};

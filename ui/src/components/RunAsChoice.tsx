import { useState } from "react";

import type { ProfileView, RunAs } from "../lib/types";

/** Who a fix runs as before anything is chosen: the profile's own role. */
export const OWN_ROLE: RunAs = { kind: "profile" };

/**
 * The saved profiles a fix may run as instead of `profile`: the others for the same host, port and
 * database (the engine refuses any other).
 */
export function ownerCandidates(profile: ProfileView, profiles: ProfileView[]): ProfileView[] {
  return profiles.filter(
    (p) =>
      p.id !== profile.id &&
      p.host.toLowerCase() === profile.host.toLowerCase() &&
      p.port === profile.port &&
      p.database === profile.database,
  );
}

/** The role `runAs` logs in as, for "Runs as …" (empty while an owner role is not typed yet). */
export function roleOf(runAs: RunAs, profile: ProfileView, profiles: ProfileView[]): string {
  switch (runAs.kind) {
    case "profile":
      return profile.user;
    case "otherProfile":
      return profiles.find((p) => p.id === runAs.profile)?.user ?? "";
    case "password":
      return runAs.user.trim();
  }
}

/** Whether "Run" can go: an owner password needs its role and the password typed. */
export function runAsReady(runAs: RunAs): boolean {
  return runAs.kind !== "password" || (runAs.user.trim() !== "" && runAs.password !== "");
}

/** The same choice without the typed password: what is left once a fix ran. */
export function withoutPassword(runAs: RunAs): RunAs {
  return runAs.kind === "password" ? { ...runAs, password: "" } : runAs;
}

/** "Runs as <role>", shown above a fix's Run button. */
export function RunsAs({ runAs, profile, profiles }: { runAs: RunAs; profile: ProfileView; profiles: ProfileView[] }) {
  const role = roleOf(runAs, profile, profiles);
  return (
    <p data-testid="run-as-role">
      {role ? (
        <>
          Runs as <strong>{role}</strong>
        </>
      ) : (
        "Name the role to run as"
      )}
    </p>
  );
}

/**
 * "Run as" in a fix's preview, after its Run button (behind "Run as another role…" until used, or
 * shown when the profile's role was refused): this profile's role (the default), another saved profile for the same
 * database (typically the owner's, as Neon's guides have the owner run the setup), or an owner's
 * password, typed for this run and never kept. Says what rights the fix needs and which role runs it.
 */
export function RunAsChoice({
  profile,
  profiles,
  needs,
  value,
  onChange,
  refused = false,
}: {
  profile: ProfileView;
  profiles: ProfileView[];
  /** What rights the fix needs, as the engine says. */
  needs?: string;
  value: RunAs;
  onChange: (runAs: RunAs) => void;
  /** The profile's role was just refused for lack of rights: the choice opens by itself. */
  refused?: boolean;
}) {
  const [asked, setAsked] = useState(false);
  const others = ownerCandidates(profile, profiles);
  if (!asked && !refused && value.kind === "profile") {
    return (
      <p>
        <button type="button" className="link" data-testid="run-as-toggle" onClick={() => setAsked(true)}>
          Run as another role…
        </button>
      </p>
    );
  }
  return (
    <fieldset className="run-as" data-testid="run-as">
      <legend>Run as</legend>
      {needs && (
        <p className="muted" data-testid="run-as-needs">
          Needs {needs}.
        </p>
      )}
      <label className="choice">
        <input
          type="radio"
          name="run-as"
          data-testid="run-as-profile"
          checked={value.kind === "profile"}
          onChange={() => onChange(OWN_ROLE)}
        />{" "}
        This profile&apos;s role ({profile.user})
      </label>
      <label className="choice">
        <input
          type="radio"
          name="run-as"
          data-testid="run-as-other"
          disabled={others.length === 0}
          checked={value.kind === "otherProfile"}
          onChange={() => others[0] && onChange({ kind: "otherProfile", profile: others[0].id })}
        />{" "}
        Another saved profile
        {others.length === 0 && <span className="muted"> (none other for {profile.database} on {profile.address})</span>}
      </label>
      {value.kind === "otherProfile" && (
        <select
          aria-label="Profile to run as"
          data-testid="run-as-other-select"
          value={value.profile}
          onChange={(e) => onChange({ kind: "otherProfile", profile: e.target.value })}
        >
          {others.map((p) => (
            <option key={p.id} value={p.id}>
              {p.name} ({p.user})
            </option>
          ))}
        </select>
      )}
      <label className="choice">
        <input
          type="radio"
          name="run-as"
          data-testid="run-as-password"
          checked={value.kind === "password"}
          onChange={() => onChange({ kind: "password", user: "", password: "" })}
        />{" "}
        An owner&apos;s password (used for this run, not kept)
      </label>
      {value.kind === "password" && (
        <div className="run-as-owner">
          <label>
            Role{" "}
            <input
              type="text"
              data-testid="run-as-user"
              placeholder="neondb_owner"
              autoComplete="off"
              value={value.user}
              onChange={(e) => onChange({ ...value, user: e.target.value })}
            />
          </label>{" "}
          <label>
            Password{" "}
            <input
              type="password"
              data-testid="run-as-password-input"
              autoComplete="off"
              value={value.password}
              onChange={(e) => onChange({ ...value, password: e.target.value })}
            />
          </label>
        </div>
      )}
    </fieldset>
  );
}

// The shapes that cross between the engine (through the desktop shell) and the UI are generated from
// the Rust types into generated.ts (its header names the command that regenerates it) and re-exported
// here, so the UI imports every transport type from this one module. What stays in this file cannot be
// generated: constants, type guards and the form's helpers.

import type { BackendError, ConsumerAction, ProfileDraft, ProfileView, SslMode } from "./generated";

export type * from "./generated";

/**
 * Every member of the string union `T`, as a list in the order given: the compiler refuses a list
 * that leaves one out, so a member added on the Rust side cannot be missing from the UI's choices.
 */
const allOf =
  <T extends string>() =>
  <L extends readonly T[]>(...list: L & ([Exclude<T, L[number]>] extends [never] ? unknown : never)): T[] => [
    ...list,
  ];

/** libpq's TLS modes, in the form's order. */
export const SSL_MODES: SslMode[] = allOf<SslMode>()(
  "disable",
  "allow",
  "prefer",
  "require",
  "verify-ca",
  "verify-full",
);

/** Whether a host is one of Neon's (where the Neon part of Setup applies). */
export const isNeonHost = (host: string): boolean => /\.neon\.(tech|build)$/i.test(host);

/** Whether a command's rejection is the backend's `{kind, message}` (anything else is a bug or a lost window). */
export function isBackendError(value: unknown): value is BackendError {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as BackendError).kind === "string" &&
    typeof (value as BackendError).message === "string"
  );
}

/** A blank form with the engine's defaults. */
export function emptyDraft(): ProfileDraft {
  return {
    name: "",
    address: "",
    user: "",
    database: "postgres",
    sslmode: "prefer",
    sslrootcert: null,
    options: null,
    channelBinding: "prefer",
    publication: null,
    slot: null,
    applicationName: null,
    passwordStorage: "keychain",
    encryptStore: true,
    sshAddress: null,
    sshHostKey: null,
  };
}

/** The form's fields for a saved profile. */
export function draftOf(profile: ProfileView): ProfileDraft {
  return {
    name: profile.name,
    address: profile.address,
    user: profile.user,
    database: profile.database,
    sslmode: profile.sslmode,
    sslrootcert: profile.sslrootcert ?? null,
    options: profile.options ?? null,
    channelBinding: profile.channelBinding,
    publication: profile.publication,
    slot: profile.slot,
    applicationName: profile.applicationName,
    passwordStorage: profile.password,
    encryptStore: profile.encrypted,
    sshAddress: profile.ssh?.address ?? null,
    sshHostKey: profile.ssh?.hostKey ?? null,
  };
}

/** A consumer's actions, in the form's order. */
export const CONSUMER_ACTIONS: ConsumerAction[] = allOf<ConsumerAction>()("insert", "update", "delete", "read");

/** The default subject template (the engine's `DEFAULT_NATS_SUBJECT`). */
export const DEFAULT_NATS_SUBJECT = "tidepool.{schema}.{table}.{action}";

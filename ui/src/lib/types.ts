// Transport types: the shapes that cross between the engine (through the desktop shell) and the UI.
// They mirror the engine's serde output; keep them in this one file.

/** Error kinds the engine reports; the UI chooses what to show by kind, never by message text. */
export type ErrorKind =
  | "InvalidInput"
  | "Connection"
  | "Authentication"
  | "Tls"
  | "Permission"
  | "NotFound"
  | "Postgres"
  | "Keychain"
  | "Internal";

/** Every error from the backend reaches the UI as `{kind, message}`. */
export interface BackendError {
  kind: ErrorKind;
  message: string;
}

export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";

export const SSL_MODES: SslMode[] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

/** The connection form, as Estuary Flow's PostgreSQL capture names its fields. */
export interface ConnectionForm {
  address: string;
  user: string;
  password: string;
  database: string;
  sslmode: SslMode;
}

export type ReplicationRight =
  | { basis: "superuser" }
  | { basis: "attribute" }
  | { basis: "membership"; role: string }
  | { basis: "none" };

/** What "Test connection" learns about a server. */
export interface ServerFacts {
  serverVersion: string;
  serverVersionNum: number;
  currentUser: string;
  database: string;
  walLevel: string;
  replication: ReplicationRight;
  tls: boolean;
  roundTripMs: number;
}

export function isBackendError(value: unknown): value is BackendError {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as BackendError).kind === "string" &&
    typeof (value as BackendError).message === "string"
  );
}

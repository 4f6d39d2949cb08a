import type { ReactNode } from "react";

import type { BackendError, ErrorKind } from "../lib/types";

/** A heading per error kind: what kind of problem it is, before the engine's message says exactly what. */
const TITLES: Record<ErrorKind, string> = {
  InvalidInput: "Check the form",
  Connection: "Could not reach the server",
  Authentication: "The server refused the login",
  Tls: "TLS problem",
  Permission: "Not allowed",
  NotFound: "Not found",
  Postgres: "The server reported an error",
  Keychain: "Keychain problem",
  Storage: "The local store cannot be written",
  Diverged: "The store can no longer follow the source without a gap",
  Locked: "The encrypted store cannot be opened",
  Behind: "A consumer fell behind the store's retention",
  Internal: "Something went wrong in Tidepool",
};

/** An engine error shown inline: its kind, its message, and an optional next step. */
export function ErrorNotice({ error, testId, children }: { error: BackendError; testId: string; children?: ReactNode }) {
  return (
    <div className="error" role="alert" data-testid={testId}>
      <strong>{TITLES[error.kind] ?? "Error"}</strong>{" "}
      <span className="badge" data-testid={`${testId}-kind`}>
        {error.kind}
      </span>
      <p data-testid={`${testId}-message`}>{error.message}</p>
      {children}
    </div>
  );
}

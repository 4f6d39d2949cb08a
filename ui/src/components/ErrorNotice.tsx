import type { ReactNode } from "react";

import type { BackendError, ErrorKind } from "../lib/types";

/**
 * Where a notice is shown: under a form the user just filled in (the fix is in a field on screen), or
 * on a screen without one (the fix is elsewhere, or on the server).
 */
export type Place = "form" | "screen";

/** One plain sentence per error kind: what happened, before the engine's message says exactly what. */
const SENTENCES: Record<ErrorKind, string> = {
  InvalidInput: "Tidepool cannot use a value it was given.",
  Connection: "Tidepool could not reach the server.",
  Authentication: "The server refused the login.",
  Tls: "The encrypted (TLS) connection could not be set up.",
  Permission: "The database role is not allowed to do this.",
  NotFound: "Something Tidepool looked for does not exist.",
  Postgres: "PostgreSQL reported an error.",
  Keychain: "The OS keychain could not be used.",
  Storage: "The local store on this computer cannot be written.",
  Diverged: "The store can no longer follow the source without a gap.",
  Locked: "The encrypted store cannot be opened.",
  Behind: "A consumer fell behind what the store still keeps.",
  HostKey: "The SSH bastion's host key is not the one accepted.",
  Busy: "Another capture is writing this profile's store.",
  Internal: "Something went wrong inside Tidepool.",
};

/** What to do first, by kind and by where the notice is shown (a form's fields are right there). */
const FIRST_STEPS: Record<ErrorKind, Record<Place, string>> = {
  InvalidInput: {
    form: "Correct the value the message names, then try again.",
    screen: "Change the value the message names where it was set, then try again.",
  },
  Connection: {
    form: "Check the server address and port, and that the server is running and reachable from this computer.",
    screen: "Check that the server is running and reachable from this computer, then try again.",
  },
  Authentication: {
    form: "Check the user name and the password.",
    screen: "Check the user name and the password on the Connection tab.",
  },
  Tls: {
    form: "Check the SSL mode and the root certificate under Advanced options.",
    screen: "Check the SSL mode and the root certificate on the Connection tab, under Advanced options.",
  },
  Permission: {
    form: "Connect as a role that has the right the message names, or grant it to this role.",
    screen: "Grant the role the right the message names (Setup shows the SQL), or connect as a role that has it.",
  },
  NotFound: {
    form: "Check the name the message gives: it may be misspelled, dropped or renamed.",
    screen: "Check the name the message gives: it may have been dropped or renamed.",
  },
  Postgres: {
    form: "Read PostgreSQL's message below; Details has its error code.",
    screen: "Read PostgreSQL's message below; Details has its error code.",
  },
  Keychain: {
    form: "Unlock the OS keychain (log in to the desktop session), then try again.",
    screen: "Unlock the OS keychain (log in to the desktop session), then try again.",
  },
  Storage: {
    form: "Check that the disk has free space and that Tidepool's data folder can be written.",
    screen: "Check that the disk has free space and that Tidepool's data folder can be written.",
  },
  Diverged: { form: "Choose one of the ways below.", screen: "Choose one of the ways below." },
  Locked: { form: "Choose one of the ways below.", screen: "Choose one of the ways below." },
  Behind: {
    form: "Move the consumer to the oldest change the store keeps, or create it again.",
    screen: "Move the consumer to the oldest change the store keeps, or create it again.",
  },
  HostKey: {
    form: "Compare the fingerprint below with the bastion's own (ssh-keygen -lf on its host key), then trust it.",
    screen: "Compare the fingerprint with the bastion's own, then trust it on the Connection tab.",
  },
  Busy: {
    form: "Stop the other capture of this profile (in another Tidepool window or a tidepool capture command), then try again.",
    screen: "Stop the other capture of this profile (in another Tidepool window or a tidepool capture command), then try again.",
  },
  Internal: {
    form: "Try again. If it happens again, Tidepool's log (in its data folder) has the details.",
    screen: "Try again. If it happens again, Tidepool's log (in its data folder) has the details.",
  },
};

/** PostgreSQL's error code as the engine appends it to a server error's message. */
const SQLSTATE = /\s*\(SQLSTATE ([0-9A-Z]{5})\)/;

/** Splits a message into what a person reads and the SQLSTATE code, if any. */
export function splitCode(message: string): { text: string; code: string | null } {
  const found = SQLSTATE.exec(message);
  return found ? { text: message.replace(SQLSTATE, ""), code: found[1] } : { text: message, code: null };
}

interface Props {
  error: BackendError;
  testId: string;
  /** Where it is shown; decides the first step (default: a screen without a form). */
  place?: Place;
  /** The element id, for a field's aria-describedby. */
  id?: string;
  children?: ReactNode;
}

/**
 * An engine error shown inline: a sentence, the engine's message (which names the field or object at
 * fault), what to do first, an optional next step, and the kind and SQLSTATE behind "Details".
 */
export function ErrorNotice({ error, testId, place = "screen", id, children }: Props) {
  const { text, code } = splitCode(error.message);
  return (
    <div className="error" role="alert" data-testid={testId} id={id}>
      <strong data-testid={`${testId}-title`}>{SENTENCES[error.kind] ?? "Something went wrong."}</strong>
      <p data-testid={`${testId}-message`}>{text}</p>
      <p className="first-step" data-testid={`${testId}-step`}>
        {FIRST_STEPS[error.kind]?.[place] ?? FIRST_STEPS.Internal[place]}
      </p>
      {children}
      <details className="error-details">
        <summary data-testid={`${testId}-details`}>Details</summary>
        <span className="badge" data-testid={`${testId}-kind`}>
          {error.kind}
        </span>
        {code && (
          <span className="badge" data-testid={`${testId}-code`}>
            SQLSTATE {code}
          </span>
        )}
      </details>
    </div>
  );
}

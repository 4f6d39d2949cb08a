import type { Choice, Handling, Hazard } from "../lib/types";

const LABEL: Record<Handling, (publication: string) => string> = {
  leaveOut: () => "Leave it out: not published, its writes keep working, its changes are not captured",
  replicaIdentityFull: () =>
    "Set REPLICA IDENTITY FULL first: updates and deletes keep working and are captured (each logs the whole old row)",
  insertOnly: (publication) =>
    `Publish only its inserts (in ${publication}_insert_only, publish = 'insert'): updates and deletes keep working and are not captured`,
};

const key = (t: { schema: string; table: string }) => `${t.schema}.${t.table}`;

/** The choice a hazard starts with: leave it out, unless it is refused already (then nothing changes until chosen). */
export function defaultChoices(hazards: Hazard[], allowed: (h: Hazard) => Handling[] = (h) => h.options): Choice[] {
  return hazards
    .filter((h) => !h.refusedNow && allowed(h).includes("leaveOut"))
    .map((h) => ({ ...h.table, handling: "leaveOut" as Handling }));
}

/**
 * One question per picked table without a usable replica identity: publishing it with its updates and
 * deletes would make PostgreSQL refuse them in the user's own application, so the user says how it is
 * published. `allowed` narrows the options (Save and publish cannot leave out a table it captures).
 */
export function KeylessChoices({
  hazards,
  choices,
  publication,
  onChange,
  allowed = (h) => h.options,
}: {
  hazards: Hazard[];
  choices: Choice[];
  publication: string;
  onChange: (choices: Choice[]) => void;
  allowed?: (h: Hazard) => Handling[];
}) {
  if (hazards.length === 0) return null;
  const chosen = (h: Hazard) => choices.find((c) => key(c) === key(h.table))?.handling;
  const choose = (h: Hazard, handling: Handling) =>
    onChange([...choices.filter((c) => key(c) !== key(h.table)), { ...h.table, handling }]);
  return (
    <div className="keyless" data-testid="keyless-choices">
      {hazards.map((h) => (
        <fieldset key={key(h.table)} data-testid={`hazard-${key(h.table)}`}>
          <legend>
            <strong>{key(h.table)}</strong>: {h.reason}
          </legend>
          <p className="note" role="alert">
            {h.refusedNow
              ? "PostgreSQL is refusing every UPDATE and DELETE on this table now, because a publication covers it."
              : "Publishing it with its updates and deletes would make PostgreSQL refuse every UPDATE and DELETE on it, in your application too."}
          </p>
          {allowed(h).map((handling) => (
            <label key={handling} className="choice">
              <input
                type="radio"
                name={`handling-${key(h.table)}`}
                data-testid={`choice-${key(h.table)}-${handling}`}
                checked={chosen(h) === handling}
                onChange={() => choose(h, handling)}
              />{" "}
              {LABEL[handling](publication)}
            </label>
          ))}
        </fieldset>
      ))}
    </div>
  );
}

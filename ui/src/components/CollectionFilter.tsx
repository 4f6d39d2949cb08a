import { useState, type ReactNode } from "react";

import type { BackendError } from "../lib/types";
import { filterPosition } from "./ConsumerForm";

/**
 * The preview's CEL filter: applied on Apply (the engine evaluates it, also on the live change log),
 * and the engine's refusal shown under it with a caret at the position it names. `children` sit at the
 * end of the filter's row.
 */
export function CollectionFilter({
  filter,
  error,
  onApply,
  children,
}: {
  /** The filter applied, or null for none. */
  filter: string | null;
  /** The engine's refusal of the applied filter. */
  error: BackendError | null;
  onApply: (filter: string | null) => void;
  children?: ReactNode;
}) {
  const [draft, setDraft] = useState("");
  const at = error ? filterPosition(error.message) : null;
  return (
    <form
      className="filter"
      data-testid="filter-form"
      onSubmit={(e) => {
        e.preventDefault();
        onApply(draft.trim() ? draft : null);
      }}
    >
      <div className="row">
        <label className="inline grow">
          Filter
          <input
            className={error ? "invalid mono" : "mono"}
            data-testid="filter-expression"
            aria-invalid={error !== null}
            aria-describedby={error ? "filter-problem" : undefined}
            value={draft}
            spellCheck={false}
            placeholder={'CEL, as in consumers: record.status == "shipped" && record.total > 100'}
            onChange={(e) => setDraft(e.target.value)}
          />
        </label>
        <button type="submit" data-testid="filter-apply">
          Apply
        </button>
        {(filter || draft) && (
          <button
            type="button"
            className="secondary"
            data-testid="filter-clear"
            onClick={() => {
              setDraft("");
              onApply(null);
            }}
          >
            Clear
          </button>
        )}
        <span className="spacer" />
        {children}
      </div>
      {error && (
        <div className="field-error" role="alert" id="filter-problem" data-testid="filter-problem">
          {at && (
            <pre className="caret" aria-hidden="true" data-testid="filter-caret">
              {(draft.split("\n")[at.line - 1] ?? "") + "\n" + " ".repeat(Math.max(0, at.column - 1)) + "^"}
            </pre>
          )}
          {error.message.replace(/^filter: /, "")}
        </div>
      )}
      <p className="muted hint">
        Variables: <code>record</code> (the row), <code>changes</code> (an update&apos;s previous values),{" "}
        <code>action</code> (insert, update, delete, read), <code>metadata</code>. Evaluated in the engine, also on
        the live change log; a number is not text: <code>record.id == 3</code>, not <code>&quot;3&quot;</code>.
      </p>
    </form>
  );
}

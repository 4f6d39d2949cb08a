import { useState } from "react";

import { scrollIntoView } from "../lib/reveal";
import type { ChangeInfo } from "../lib/types";
import { JsonView } from "./JsonView";

/** A value as the table shows it: NULL apart from text; one the engine did not repeat, said so. */
function shown(value: unknown): string {
  if (value === undefined) return "(large value: see the document)";
  if (value === null) return "NULL";
  return typeof value === "string" ? value : JSON.stringify(value);
}

/** Copies text to the clipboard: the async API where the web view grants it, else a selected textarea. */
async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed";
    area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try {
      return document.execCommand("copy");
    } catch {
      return false;
    } finally {
      area.remove();
    }
  }
}

/** An update's before and after, only as far as the change says (the engine's `UpdateDiff`). */
function WhatChanged({ info }: { info: ChangeInfo }) {
  const diff = info.update;
  if (!diff) return null;
  return (
    <section data-testid="preview-diff" data-before={diff.before}>
      <h4>What changed</h4>
      {diff.fields.length > 0 && (
        <table className="tables diff">
          <thead>
            <tr>
              <th>Column</th>
              <th>Before</th>
              <th>After</th>
            </tr>
          </thead>
          <tbody>
            {diff.fields.map((f) => (
              <tr key={f.name} data-testid="preview-diff-field">
                <td>{f.name}</td>
                <td className="before">{shown(f.before)}</td>
                <td>{shown(f.after)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      )}
      {diff.before === "full" && diff.fields.length === 0 && (
        <p className="muted">No column changed value (the row was written again with the same values).</p>
      )}
      {diff.before === "key" && (
        <p className="muted" data-testid="preview-diff-note">
          The key changed, so PostgreSQL sent the old key. The other columns&apos; previous values are not known; with{" "}
          <code>REPLICA IDENTITY FULL</code> on the table an update carries its whole previous row.
        </p>
      )}
      {diff.before === "unknown" && (
        <p className="muted" data-testid="preview-diff-note">
          Before not known: PostgreSQL sent only the new row (the table&apos;s replica identity is the default). With{" "}
          <code>REPLICA IDENTITY FULL</code> on the table, an update carries its previous row and this shows what changed.
        </p>
      )}
    </section>
  );
}

/** The clicked row's document beside the table: what the change was, the JSON (coloured), and Copy. */
export function DocumentPanel({ doc, info, onClose }: { doc: Record<string, unknown>; info: ChangeInfo | null; onClose: () => void }) {
  const [copied, setCopied] = useState<"yes" | "no" | null>(null);
  const text = JSON.stringify(doc, null, 2);
  return (
    <aside className="document" aria-label="Document" data-testid="preview-document" ref={scrollIntoView}>
      <div className="card-head">
        <h3>Document</h3>
        <span className="spacer" />
        <button
          type="button"
          className="secondary"
          data-testid="preview-copy"
          onClick={() => void copyText(text).then((ok) => setCopied(ok ? "yes" : "no"))}
        >
          {copied === "yes" ? "Copied" : "Copy"}
        </button>
        <button type="button" className="link" data-testid="preview-json-close" onClick={onClose}>
          Close
        </button>
      </div>
      {copied === "no" && (
        <p className="field-error" role="alert">
          Could not copy: select the text and press Ctrl+C.
        </p>
      )}
      {info && (
        <p className="muted" data-testid="preview-commit">
          {info.snapshot ? "Backfilled" : "Committed"}
          {info.committedMs !== null && ` ${new Date(info.committedMs).toLocaleString()}`}
          {info.lsn && ` · LSN ${info.lsn}`}
          {info.xid !== null && ` · transaction ${info.xid}`}
        </p>
      )}
      {info && <WhatChanged info={info} />}
      <JsonView value={doc} testId="preview-json" />
    </aside>
  );
}

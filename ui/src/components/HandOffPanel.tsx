import { useState } from "react";

import * as backend from "../lib/backend";
import type { Engine, ExportFile } from "../lib/types";
import { useAction } from "../lib/useAction";
import { ErrorNotice } from "./ErrorNotice";

const ENGINES: { engine: Engine; label: string; next: string }[] = [
  {
    engine: "estuary",
    label: "Export to Estuary Flow",
    next: "Save it as flow.yaml, fill in the tenant prefix and the password, then run `flowctl catalog publish --source flow.yaml`.",
  },
  {
    engine: "sequin",
    label: "Export to Sequin",
    next: "Save it as sequin.yaml, set the variables it names, then run `sequin config apply`.",
  },
];

/**
 * When one laptop is not enough: the capture (and its consumers) written as Estuary Flow's or Sequin's
 * configuration, to copy. Secrets stay placeholders; the file says what the other engine does differently.
 */
export function HandOffPanel({ profileId }: { profileId: string }) {
  const [file, setFile] = useState<ExportFile | null>(null);
  const { busy, error, run } = useAction();
  const [copied, setCopied] = useState(false);

  async function make(engine: Engine) {
    setCopied(false);
    setFile((await run(() => backend.exportCapture(profileId, engine))) ?? null);
  }

  const next = file && ENGINES.find((e) => e.engine === file.engine)?.next;
  return (
    <section data-testid="hand-off">
      <h3>Move to Estuary Flow or Sequin</h3>
      <p>
        Both read from a slot of their own and backfill again, so this capture can keep running while you
        try them.
      </p>
      <div className="row">
        {ENGINES.map(({ engine, label }) => (
          <button
            key={engine}
            type="button"
            className="secondary"
            data-testid={`hand-off-${engine}`}
            disabled={busy}
            onClick={() => void make(engine)}
          >
            {label}
          </button>
        ))}
      </div>
      {error && <ErrorNotice error={error} testId="hand-off-error" />}
      {file && (
        <div data-testid="hand-off-file">
          <p>
            <strong data-testid="hand-off-name">{file.fileName}</strong> — {next}{" "}
            <button
              type="button"
              className="secondary"
              data-testid="hand-off-copy"
              onClick={() => void navigator.clipboard?.writeText(file.text).then(() => setCopied(true))}
            >
              {copied ? "Copied" : "Copy"}
            </button>
          </p>
          <pre className="schema" data-testid="hand-off-text">
            {file.text}
          </pre>
        </div>
      )}
    </section>
  );
}

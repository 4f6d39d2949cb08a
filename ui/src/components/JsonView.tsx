/** One piece of a JSON text: its kind decides its colour (from the theme's variables, see styles.css). */
export type JsonToken = { text: string; kind: "key" | "string" | "number" | "literal" | "plain" };

const TOKENS = /("(?:\\.|[^"\\])*")(\s*:)?|\b(?:true|false|null)\b|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/** Splits JSON text (as `JSON.stringify` writes it) into coloured tokens; the pieces join back to the text. */
export function jsonTokens(text: string): JsonToken[] {
  const out: JsonToken[] = [];
  let at = 0;
  for (const m of text.matchAll(TOKENS)) {
    const start = m.index ?? 0;
    if (start > at) out.push({ text: text.slice(at, start), kind: "plain" });
    if (m[1] !== undefined) {
      out.push({ text: m[1], kind: m[2] !== undefined ? "key" : "string" });
      if (m[2] !== undefined) out.push({ text: m[2], kind: "plain" });
    } else {
      out.push({ text: m[0], kind: /^[-\d]/.test(m[0]) ? "number" : "literal" });
    }
    at = start + m[0].length;
  }
  if (at < text.length) out.push({ text: text.slice(at), kind: "plain" });
  return out;
}

/** A JSON value, indented and syntax-coloured. */
export function JsonView({ value, testId }: { value: unknown; testId?: string }) {
  const text = JSON.stringify(value, null, 2) ?? "";
  return (
    <pre className="schema json" data-testid={testId}>
      {jsonTokens(text).map((t, i) =>
        t.kind === "plain" ? t.text : (
          <span key={i} className={`json-${t.kind}`}>
            {t.text}
          </span>
        ),
      )}
    </pre>
  );
}

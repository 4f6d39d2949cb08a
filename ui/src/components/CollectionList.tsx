import type { CollectionInfo } from "../lib/types";

/** The profile's collections, each with its counts and last change; the selected one is marked. */
export function CollectionList({
  collections,
  selected,
  onSelect,
}: {
  collections: CollectionInfo[];
  selected: string | null;
  onSelect: (name: string) => void;
}) {
  return (
    <ul className="collections">
      {collections.map((c) => (
        <li key={c.name}>
          <button
            type="button"
            className={c.name === selected ? "tab current" : "tab"}
            data-testid={`collection-${c.name}`}
            onClick={() => onSelect(c.name)}
          >
            {c.name}{" "}
            <span className="muted" data-testid={`collection-${c.name}-counts`}>
              {c.rows} rows · {c.changes} changes
            </span>
            {c.lastChangeMs !== null && (
              <span className="muted" data-testid={`collection-${c.name}-last`}>
                {" "}
                · last change {new Date(c.lastChangeMs).toLocaleTimeString()}
              </span>
            )}
          </button>
        </li>
      ))}
    </ul>
  );
}

import type { ReactNode } from "react";

import type { Removed } from "../lib/types";

/** What removing a profile or discarding its store deleted, item by item. */
export function RemovedNotice({ removed, testId, children }: { removed: Removed; testId: string; children?: ReactNode }) {
  const items: string[] = [];
  if (removed.profileRemoved) items.push(`the profile “${removed.profile}”`);
  if (removed.store) items.push(`its local store (${removed.store})`);
  if (removed.slotDropped) items.push(`replication slot ${removed.slotDropped} on the source`);
  for (const entry of removed.keychainEntries) items.push(`keychain: ${entry}`);
  return (
    <div className="notice" role="status" data-testid={testId}>
      <strong>Deleted</strong>
      {items.length === 0 ? (
        <p>Nothing of “{removed.profile}” was stored on this machine.</p>
      ) : (
        <ul>
          {items.map((item) => (
            <li key={item}>{item}</li>
          ))}
        </ul>
      )}
      {children}
    </div>
  );
}

import type { ReplicationRight, ServerFacts } from "../lib/types";

function describeReplication(right: ReplicationRight): string {
  switch (right.basis) {
    case "superuser":
      return "Yes — superuser";
    case "attribute":
      return "Yes — REPLICATION attribute";
    case "membership":
      return `Yes — member of ${right.role}, which has REPLICATION`;
    case "none":
      return "No — this role cannot replicate";
  }
}

/** The facts read after a successful "Test connection", with what is not ready for capture marked. */
export function ServerFactsView({ facts }: { facts: ServerFacts }) {
  const walReady = facts.walLevel === "logical";
  const canReplicate = facts.replication.basis !== "none";
  return (
    <div className="facts" data-testid="server-facts">
      <h3>Connected</h3>
      <dl>
        <dt>Server version</dt>
        <dd data-testid="fact-server-version">{facts.serverVersion}</dd>
        <dt>User</dt>
        <dd data-testid="fact-user">{facts.currentUser}</dd>
        <dt>Database</dt>
        <dd data-testid="fact-database">{facts.database}</dd>
        <dt>wal_level</dt>
        <dd data-testid="fact-wal-level" className={walReady ? "ok" : "warn"}>
          {facts.walLevel}
          {!walReady && " — logical replication needs wal_level = logical"}
        </dd>
        <dt>May replicate</dt>
        <dd data-testid="fact-replication" className={canReplicate ? "ok" : "warn"}>
          {describeReplication(facts.replication)}
        </dd>
        <dt>Encrypted</dt>
        <dd data-testid="fact-tls">{facts.tls ? "Yes (TLS)" : "No"}</dd>
        <dt>Round trip</dt>
        <dd data-testid="fact-rtt">{facts.roundTripMs.toFixed(2)} ms</dd>
      </dl>
    </div>
  );
}

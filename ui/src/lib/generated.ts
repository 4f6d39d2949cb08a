// Generated from the Rust transport types by ts-rs: do not edit by hand.
// Regenerate with `TIDEPOOL_WRITE_TYPES=1 cargo test -p tidepool-desktop --test typescript`
// (the engine's part alone: `TIDEPOOL_WRITE_TYPES=1 cargo test -p tidepool --lib typescript`).
// Hand-written UI types, constants and guards live in types.ts, which re-exports these.

/**
 * Something worth telling the person about a parsed connection string.
 */
export type Advice = {
  "kind": "neonPooler",
  /**
   * The host as given.
   */
  pooledHost: string,
  /**
   * The same endpoint's direct host.
   */
  directHost: string,
};

/**
 * What "Autofill with URL" gives back: the form's fields, the password that was in the pasted string
 * (only so the form's password field can be filled; it is stored only on save), and advice.
 */
export type Autofill = {
  /**
   * The fields, ready for the form.
   */
  draft: ProfileDraft,
  /**
   * The password found in the pasted string, handed back to the form it came from.
   */
  password: RevealedSecret | null,
  /**
   * E.g. a Neon `-pooler` host, with the direct host to switch to.
   */
  advice: Array<Advice>,
};

/**
 * An engine error: a kind to match on and a message for a person.
 */
export type BackendError = { kind: ErrorKind, message: string, };

/**
 * How far a table's backfill is.
 */
export type BackfillProgress = {
  /**
   * The collection, `schema/table`.
   */
  collection: string,
  /**
   * Rows read so far.
   */
  rows: number,
  /**
   * The planner's estimate of the table's rows, when it has one.
   */
  estimatedRows: number | null,
  /**
   * Rows per second so far.
   */
  rowsPerSecond: number,
  /**
   * Seconds left at this rate, when the estimate allows saying.
   */
  secondsLeft: number | null,
  /**
   * Whether the table is done.
   */
  done: boolean,
};

/**
 * How much of an updated row's previous version a change carries.
 */
export type BeforeImage = "full" | "key" | "unknown";

/**
 * One source table bound to one collection.
 */
export type Binding = {
  /**
   * Source schema.
   */
  schema: string,
  /**
   * Source table.
   */
  table: string,
  /**
   * The collection's name in the store.
   */
  collection: string,
  /**
   * How the collection starts.
   */
  mode: BindingMode,
  /**
   * Raised by one to read the table again (a re-backfill), as Estuary's backfill counter.
   */
  backfill: number,
  /**
   * The table's identity at the source (`pg_class.oid`, pgoutput's relation id). `schema` and
   * `table` are its last known name: a renamed table keeps its binding, and a table dropped and
   * created again under the same name is a different one. Filled in by the capture (from the name,
   * for definitions saved before OIDs were recorded).
   */
  oid?: number | null,
};

/**
 * How a binding's collection starts.
 */
export type BindingMode = "full" | "onlyChanges";

/**
 * What a capture stores: its publication and slot, and the tables it binds to collections.
 */
export type CaptureDefinition = {
  /**
   * The connection profile the capture reads from, when it was made from one.
   */
  profile: string | null,
  /**
   * Publication to decode with.
   */
  publication: string,
  /**
   * Slot to stream from.
   */
  slot: string,
  /**
   * The bound tables.
   */
  bindings: Array<Binding>,
};

/**
 * What one change-log entry was, beside its document: where and when it was committed, and for an
 * update what it changed.
 */
export type ChangeInfo = {
  /**
   * Its position in the store's log.
   */
  seq: number,
  /**
   * `c` (insert, or a backfilled row), `u`, `d` or `t`.
   */
  op: string,
  /**
   * A row read by the backfill, not a change from the stream: `lsn` is then the snapshot's
   * consistent point, `committed_ms` when it was read, and there is no transaction.
   */
  snapshot: boolean,
  /**
   * The commit's LSN (`_meta.source.lsn`, PostgreSQL's `X/X` form).
   */
  lsn: string | null,
  /**
   * The source transaction's id (`_meta.source.txid`).
   */
  xid: number | null,
  /**
   * When the transaction committed at the source, Unix milliseconds (`_meta.source.ts_ms`).
   */
  committedMs: number | null,
  /**
   * For an update: what changed, as far as the change says.
   */
  update: UpdateDiff | null,
};

/**
 * libpq's `channel_binding`: whether SCRAM authentication binds to the TLS channel.
 */
export type ChannelBinding = "disable" | "prefer" | "require";

/**
 * How a check came out.
 */
export type CheckStatus = "pass" | "warn" | "fail" | "step";

/**
 * The user's decision for one table.
 */
export type Choice = {
  /**
   * Schema.
   */
  schema: string,
  /**
   * Table.
   */
  table: string,
  /**
   * What to do with it.
   */
  handling: Handling,
};

/**
 * A collection as discovery proposes it.
 */
export type CollectionDraft = {
  /**
   * `schema/table`.
   */
  name: string,
  /**
   * JSON pointers of the key, e.g. `["/id"]`; empty when the table has no usable key.
   */
  key: Array<string>,
  /**
   * JSON Schema (draft 2020-12) of the documents.
   */
  schema: unknown,
};

/**
 * A collection's counts, for `tidepool collections`.
 */
export type CollectionInfo = {
  /**
   * Name.
   */
  name: string,
  /**
   * Current rows.
   */
  rows: number,
  /**
   * Entries in the change log.
   */
  changes: number,
  /**
   * When the newest change happened at the source (`_meta.source.ts_ms` of the log's last entry:
   * the commit time, or the backfill's read time), Unix milliseconds.
   */
  lastChangeMs: number | null,
};

/**
 * A collection's description, as the capture last saw its table.
 */
export type CollectionSpec = {
  /**
   * Name, `schema/table` unless renamed.
   */
  name: string,
  /**
   * Source schema.
   */
  schema: string,
  /**
   * Source table.
   */
  table: string,
  /**
   * Key column names, in key order.
   */
  key: Array<string>,
  /**
   * Columns as `[{"name":…, "typeOid":…}]`.
   */
  columns: Array<{ name: string, typeOid: number }>,
};

/**
 * Which view of a collection.
 */
export type CollectionView = "rows" | "changes";

/**
 * A saved consumer: its definition, its id and where it stands.
 */
export type Consumer = {
  /**
   * Stable id (a UUID), in every message's `metadata.consumer.id`.
   */
  id: string,
  /**
   * The last log position read into its queue.
   */
  position: number,
  /**
   * Messages waiting or in flight.
   */
  pending: number,
  /**
   * Messages parked after their last retry.
   */
  failed: number,
  /**
   * What its user must know: changes it missed (fell behind the retention) or a gap in the
   * store's history it is crossing.
   */
  notices: Array<ConsumerNotice>,
  /**
   * Paused by hand: nothing is delivered until it is resumed; its messages stay queued.
   */
  paused: boolean,
  /**
   * Unique name in the store.
   */
  name: string,
  /**
   * Collections of the capture it delivers.
   */
  collections: Array<string>,
  /**
   * Actions delivered; empty means all.
   */
  actions: Array<ConsumerAction>,
  /**
   * A CEL expression over `record`, `changes`, `action` and `metadata`.
   */
  filter: string | null,
  /**
   * Changes or rows.
   */
  mode: ConsumerMode,
  /**
   * Where it starts.
   */
  start: ConsumerStart,
  /**
   * Columns that group messages (one in flight per group, commit order within it); empty means
   * the row's key.
   */
  groupBy: Array<string>,
  /**
   * Where messages go.
   */
  destination: ConsumerDestination,
};

/**
 * What a change did, as Sequin names it.
 */
export type ConsumerAction = "insert" | "update" | "delete" | "read";

/**
 * What a consumer's page shows besides its definition: its recent requests and what it delivered
 * per second.
 */
export type ConsumerActivity = {
  /**
   * Its last requests (at most [`crate::deliver::ledger::ATTEMPTS_KEPT`]), newest first.
   */
  attempts: Array<DeliveryAttempt>,
  /**
   * Per second of the last [`ACTIVITY_SECONDS`] in which it delivered something, oldest first.
   */
  samples: Array<DeliverySample>,
  /**
   * When this was read (Unix ms), so a chart's time axis ends now.
   */
  nowMs: number,
};

/**
 * Where messages go.
 */
export type ConsumerDestination =
  | { "type": "webhook" } & WebhookDestination
  | { "type": "pull" } & PullDestination
  | { "type": "nats" } & NatsDestination;

/**
 * Every change, or the latest state of each row.
 */
export type ConsumerMode = "changes" | "rows";

/**
 * Something a consumer's user must know about what it delivers, kept until the consumer is removed.
 */
export type ConsumerNotice = {
  /**
   * [`crate::ErrorKind::Behind`]: changes it had not read were pruned;
   * [`crate::ErrorKind::Diverged`]: the store's history has a gap it crosses.
   */
  kind: ErrorKind,
  /**
   * What happened and what it means for the messages, naming the consumer.
   */
  message: string,
  /**
   * When it was recorded (Unix milliseconds).
   */
  atMs: number,
};

/**
 * A consumer as a person defines it.
 */
export type ConsumerSpec = {
  /**
   * Unique name in the store.
   */
  name: string,
  /**
   * Collections of the capture it delivers.
   */
  collections: Array<string>,
  /**
   * Actions delivered; empty means all.
   */
  actions: Array<ConsumerAction>,
  /**
   * A CEL expression over `record`, `changes`, `action` and `metadata`.
   */
  filter: string | null,
  /**
   * Changes or rows.
   */
  mode: ConsumerMode,
  /**
   * Where it starts.
   */
  start: ConsumerStart,
  /**
   * Columns that group messages (one in flight per group, commit order within it); empty means
   * the row's key.
   */
  groupBy: Array<string>,
  /**
   * Where messages go.
   */
  destination: ConsumerDestination,
};

/**
 * Where a new consumer starts in the store's log.
 */
export type ConsumerStart = "now" | "beginning";

/**
 * A consumer as the Consumers tab and `tidepool consumer show --json` show it: its definition
 * (secret header names only), where it stands and its parked messages.
 */
export type ConsumerView = {
  /**
   * Messages parked after their last retry, each with its last error.
   */
  parked: Array<ParkedMessage>,
  /**
   * Stable id (a UUID), in every message's `metadata.consumer.id`.
   */
  id: string,
  /**
   * The last log position read into its queue.
   */
  position: number,
  /**
   * Messages waiting or in flight.
   */
  pending: number,
  /**
   * Messages parked after their last retry.
   */
  failed: number,
  /**
   * What its user must know: changes it missed (fell behind the retention) or a gap in the
   * store's history it is crossing.
   */
  notices: Array<ConsumerNotice>,
  /**
   * Paused by hand: nothing is delivered until it is resumed; its messages stay queued.
   */
  paused: boolean,
  /**
   * Unique name in the store.
   */
  name: string,
  /**
   * Collections of the capture it delivers.
   */
  collections: Array<string>,
  /**
   * Actions delivered; empty means all.
   */
  actions: Array<ConsumerAction>,
  /**
   * A CEL expression over `record`, `changes`, `action` and `metadata`.
   */
  filter: string | null,
  /**
   * Changes or rows.
   */
  mode: ConsumerMode,
  /**
   * Where it starts.
   */
  start: ConsumerStart,
  /**
   * Columns that group messages (one in flight per group, commit order within it); empty means
   * the row's key.
   */
  groupBy: Array<string>,
  /**
   * Where messages go.
   */
  destination: ConsumerDestination,
};

/**
 * One request (or publish batch) a delivery worker made, as a consumer's page lists it.
 */
export type DeliveryAttempt = {
  /**
   * When it started (Unix ms).
   */
  atMs: number,
  /**
   * Messages it carried (0 for a test message).
   */
  messages: number,
  /**
   * The HTTP status answered, if one was.
   */
  status: number | null,
  /**
   * Why it failed; none when it was acknowledged.
   */
  error: string | null,
  /**
   * How long it took.
   */
  durationMs: number,
  /**
   * A "Send a test message" request, not a delivery.
   */
  test: boolean,
};

/**
 * What a consumer delivered in one second.
 */
export type DeliverySample = {
  /**
   * The second (Unix seconds).
   */
  second: number,
  /**
   * Messages acknowledged in it.
   */
  delivered: number,
  /**
   * Their mean commit → acknowledged latency.
   */
  latencyAvgMs: number,
  /**
   * Their longest.
   */
  latencyMaxMs: number,
};

/**
 * A discovered column.
 */
export type DiscoveredColumn = {
  /**
   * Name.
   */
  name: string,
  /**
   * Type OID.
   */
  typeOid: number,
  /**
   * `format_type()`, e.g. `character varying(10)`.
   */
  typeName: string,
  /**
   * Whether NULL is allowed.
   */
  nullable: boolean,
};

/**
 * A table as a collection.
 */
export type DiscoveredTable = {
  /**
   * The table's identity (`pg_class.oid`), which a rename keeps.
   */
  oid: number,
  /**
   * Schema.
   */
  schema: string,
  /**
   * Table.
   */
  table: string,
  /**
   * Whether it is a partitioned table (captured as one unit).
   */
  partitioned: boolean,
  /**
   * Columns in order.
   */
  columns: Array<DiscoveredColumn>,
  /**
   * Key columns in key order.
   */
  key: Array<string>,
  /**
   * Where the key comes from.
   */
  keySource: KeySource,
  /**
   * The unique index used as key, when it is one.
   */
  keyIndex: string | null,
  /**
   * `default`, `nothing`, `full` or `index`.
   */
  replicaIdentity: string,
  /**
   * Estimated rows (`reltuples`), when the table was analyzed.
   */
  estimatedRows: number | null,
  /**
   * Total size on disk in bytes, with indexes and TOAST.
   */
  sizeBytes: number,
  /**
   * Whether the publication given to discovery publishes it.
   */
  inPublication: boolean,
  /**
   * The collection: default name, key pointers, JSON Schema.
   */
  collection: CollectionDraft,
};

/**
 * The engine an export is for.
 */
export type Engine = "estuary" | "sequin";

/**
 * What went wrong, coarsely enough that a UI can choose what to show and what to offer next.
 */
export type ErrorKind =
  | "InvalidInput"
  | "Connection"
  | "Authentication"
  | "Tls"
  | "Permission"
  | "NotFound"
  | "Postgres"
  | "Keychain"
  | "Storage"
  | "Diverged"
  | "Locked"
  | "Behind"
  | "HostKey"
  | "Busy"
  | "Internal";

/**
 * An export, ready to be saved or shown.
 */
export type ExportFile = {
  /**
   * The engine it is for.
   */
  engine: Engine,
  /**
   * The file name the engine expects (`flow.yaml`, `sequin.yaml`).
   */
  fileName: string,
  /**
   * The file's text: comments first, then the YAML.
   */
  text: string,
};

/**
 * A file format for [`export`].
 */
export type ExportFormat = "jsonl" | "csv";

/**
 * What an export wrote.
 */
export type Exported = {
  /**
   * The file.
   */
  path: string,
  /**
   * Documents written.
   */
  documents: number,
};

/**
 * One changed column.
 */
export type FieldChange = {
  /**
   * The column.
   */
  name: string,
  /**
   * Its previous value (JSON `null` for NULL); absent when longer than [`DIFF_VALUE_BYTES`] (it is
   * in the document's `_meta.before`, and is not sent twice).
   */
  before?: unknown,
  /**
   * Its new value; absent when longer than [`DIFF_VALUE_BYTES`] (it is in the document).
   */
  after?: unknown,
};

/**
 * The answer to "Check" on a filter.
 */
export type FilterCheck = {
  /**
   * Why the expression is refused; none when it compiles.
   */
  problem: FilterProblem | null,
  /**
   * For a valid expression, per chosen collection in the store.
   */
  preview: Array<FilterPreview>,
};

/**
 * How a filter fares on one collection's newest changes.
 */
export type FilterPreview = {
  /**
   * The collection.
   */
  collection: string,
  /**
   * Changes tried: its newest, at most [`FILTER_PREVIEW_CHANGES`], of the chosen actions.
   */
  tried: number,
  /**
   * How many of them the filter keeps.
   */
  kept: number,
};

/**
 * Where an expression went wrong, as the filter field shows it.
 */
export type FilterProblem = {
  /**
   * The reason, with its position (`filter: line 1, column 16: …`), as saving would refuse it.
   */
  message: string,
  /**
   * 1-based line of the position, when the reason has one.
   */
  line: number | null,
  /**
   * 1-based column of the position, when the reason has one.
   */
  column: number | null,
};

/**
 * A fix with what it would run.
 */
export type Fix = {
  /**
   * The action to run once confirmed.
   */
  action: SetupAction,
  /**
   * The exact SQL or HTTP request.
   */
  preview: Array<string>,
  /**
   * What to know before confirming.
   */
  warning: string | null,
  /**
   * The rights the role that runs it needs ([`Action::needs`]): when the profile's own role
   * lacks them, the fix can run as an owner ([`crate::source::setup::RunAs`]).
   */
  needs: string,
  /**
   * For the publication fix: the plan, with each table that has no usable replica identity and
   * the choices for it (the UI asks before "Run").
   */
  plan?: PublicationPlan,
};

/**
 * How a table that would make PostgreSQL refuse its UPDATEs and DELETEs once published is handled.
 */
export type Handling = "leaveOut" | "replicaIdentityFull" | "insertOnly";

/**
 * A table that has no usable replica identity (itself or one of its partitions).
 */
export type Hazard = {
  /**
   * The table asked for.
   */
  table: TableRef,
  /**
   * Why, e.g. "no primary key and REPLICA IDENTITY DEFAULT".
   */
  reason: string,
  /**
   * The relations without identity: the table, or its partitions.
   */
  relations: Array<TableRef>,
  /**
   * A publication that publishes updates or deletes covers it already: PostgreSQL refuses its
   * UPDATEs and DELETEs now.
   */
  refusedNow: boolean,
  /**
   * The handlings that do what they say for this table.
   */
  options: Array<Handling>,
  /**
   * The user's choice, when made.
   */
  handling: Handling | null,
};

/**
 * How serious a warning is.
 */
export type HealthLevel = "info" | "warn" | "danger";

/**
 * One thing to know about the slot, with what to do.
 */
export type HealthWarning = {
  /**
   * Stable id for the UI and tests (`lost`, `unreserved`, `retained`, `neonRemoval`, …).
   */
  id: string,
  /**
   * How serious.
   */
  level: HealthLevel,
  /**
   * What is happening and what to do.
   */
  message: string,
};

/**
 * A bastion's host key as a person is shown it before accepting it.
 */
export type HostKey = {
  /**
   * The bastion, `host:port`.
   */
  target: string,
  /**
   * The key in OpenSSH's one-line form (`ssh-ed25519 AAAA…`), as saved in the profile.
   */
  openssh: string,
  /**
   * Its SHA-256 fingerprint as `ssh-keygen -lf` prints it (`SHA256:…`).
   */
  fingerprint: string,
};

/**
 * Where a table's key comes from.
 */
export type KeySource = "primaryKey" | "uniqueIndex" | "none";

/**
 * Whether the OS keychain can be used right now, as shown next to each profile.
 */
export type KeychainStatus =
  | {
    "state": "available",
    /**
     * Which keychain, e.g. "Secret Service".
     */
    backend: string,
  }
  | {
    "state": "unavailable",
    /**
     * What went wrong, for a person.
     */
    reason: string,
  };

/**
 * How Tidepool proves who it is to a NATS server. The secret itself (token, password, the seed of
 * an nkey, or a `.creds` file's content) is in the keychain, never here.
 */
export type NatsAuth =
  | { "kind": "none" }
  | { "kind": "token" }
  | {
    "kind": "userPassword",
    /**
     * The user name (not secret).
     */
    user: string,
  }
  | { "kind": "nkey" }
  | { "kind": "creds" };

/**
 * A NATS JetStream stream that receives each message on a subject of its own.
 */
export type NatsDestination = {
  /**
   * The server, `nats://host:port` or `tls://host:port` (several separated by commas).
   */
  url: string,
  /**
   * The subject of each message: text with `{database}`, `{schema}`, `{table}` and `{action}`
   * filled in (see [`crate::deliver::subject`]).
   */
  subject: string,
  /**
   * A stream Tidepool creates if it is missing, capturing every subject the template gives;
   * `None` means a stream the user made must capture them.
   */
  stream: string | null,
  /**
   * Credentials.
   */
  auth: NatsAuth,
  /**
   * Refuse a connection that is not TLS (a `tls://` URL implies it).
   */
  tls: boolean,
  /**
   * A PEM file of the authority that signed the server's certificate, trusted besides the
   * system's (as libpq's `sslrootcert`).
   */
  caFile: string | null,
  /**
   * How long a publish acknowledgement may take before the message counts as failed.
   */
  timeoutMs: number,
  /**
   * Messages published before their acknowledgements are awaited.
   */
  batchSize: number,
  /**
   * Failed attempts after which a message is parked; `None` retries forever.
   */
  maxRetries: number | null,
};

/**
 * A branch of a project.
 */
export type NeonBranch = {
  /**
   * e.g. `br-blue-tooth-671580`.
   */
  id: string,
  /**
   * Display name.
   */
  name: string,
  /**
   * Whether it is the project's default branch.
   */
  default: boolean,
};

/**
 * Whether the Neon API key is in the keychain, as Settings shows it.
 */
export type NeonKeyStatus = {
  /**
   * A key is stored.
   */
  stored: boolean,
};

/**
 * The Neon project and branch a profile's database lives in: what the Neon fixes act on.
 */
export type NeonLink = {
  /**
   * The project, e.g. `hidden-cell-763301`.
   */
  projectId: string,
  /**
   * The branch, e.g. `br-blue-tooth-671580`.
   */
  branchId: string,
};

/**
 * A Neon project.
 */
export type NeonProject = {
  /**
   * e.g. `hidden-cell-763301`.
   */
  id: string,
  /**
   * Display name.
   */
  name: string,
  /**
   * e.g. `aws-us-east-2`.
   */
  regionId: string,
};

/**
 * One page of documents.
 */
export type Page = {
  /**
   * The collection's description (key and columns).
   */
  collection: CollectionSpec,
  /**
   * The documents; for the change log, each with its log position.
   */
  documents: Array<Record<string,
  unknown>>,
  /**
   * For the change log: what each document's change was (one per document, in the same order),
   * read from its `_meta` here so the screen does not parse LSNs or documents itself. Empty for rows.
   */
  changes: Array<ChangeInfo>,
  /**
   * For the change log: the position of the last entry read (the next page, or a tail, starts after
   * it; with a filter, entries read that did not match are past it too).
   * For rows: the newest log position when the page was read, so a tail that follows the page
   * brings only later changes, not the whole log again.
   */
  lastSeq: number,
  /**
   * For rows in key order: the key of the last row read (the next page starts after it).
   */
  lastKey: string | null,
  /**
   * Whether a next page may have more.
   */
  hasMore: boolean,
};

/**
 * Which page to read.
 */
export type PageRequest = {
  /**
   * Rows or changes.
   */
  view: CollectionView,
  /**
   * Changes: the page starts after this log position; none for the newest entries.
   */
  after: number | null,
  /**
   * Rows in key order: the page starts after this key; none for the first.
   */
  afterKey: string | null,
  /**
   * At most this many documents (1–10,000).
   */
  limit: number,
  /**
   * Only documents this CEL expression matches: the consumers' filter language, over the
   * message a consumer would get for the document (`record`, `changes`, `action`, `metadata`).
   */
  filter: string | null,
  /**
   * Rows: in this column's order instead of the key's; the page starts `offset` rows in.
   */
  sort: Sort | null,
  /**
   * Rows with `sort`: how many rows of the order come before the page.
   */
  offset: number,
};

/**
 * A message parked after its last retry, as `tidepool consumer show` lists it.
 */
export type ParkedMessage = {
  /**
   * Its log position.
   */
  seq: number,
  /**
   * Its ack id.
   */
  ackId: string,
  /**
   * Failed attempts.
   */
  attempts: number,
  /**
   * The last failure.
   */
  lastError: string | null,
  /**
   * The message.
   */
  message: unknown,
};

/**
 * Where a profile's password lives.
 */
export type PasswordStorage = "keychain" | "askEachTime";

/**
 * One check's outcome.
 */
export type PreflightCheck = {
  /**
   * Stable id, e.g. `wal_level`, `grants:public`, `replica_identity:public.t`.
   */
  id: string,
  /**
   * What is checked, for a person.
   */
  title: string,
  /**
   * How it came out.
   */
  status: CheckStatus,
  /**
   * What was found and why it matters.
   */
  explanation: string,
  /**
   * The fix, when there is one.
   */
  fix: Fix | null,
};

/**
 * A profile as the form (or `tidepool profile add`) gives it: the fields a person fills in.
 */
export type ProfileDraft = {
  /**
   * Name.
   */
  name: string,
  /**
   * `host[:port]`.
   */
  address: string,
  /**
   * Role.
   */
  user: string,
  /**
   * Database.
   */
  database: string,
  /**
   * TLS policy.
   */
  sslmode: SslMode,
  /**
   * Root certificate file, or empty.
   */
  sslrootcert: string | null,
  /**
   * Server options, or empty.
   */
  options: string | null,
  /**
   * Channel binding.
   */
  channelBinding: ChannelBinding,
  /**
   * Publication, or empty for the default.
   */
  publication: string | null,
  /**
   * Slot, or empty for the default.
   */
  slot: string | null,
  /**
   * Application name, or empty for `tidepool`.
   */
  applicationName: string | null,
  /**
   * Where the password goes.
   */
  passwordStorage: PasswordStorage,
  /**
   * Whether the store is encrypted at rest; unset keeps the profile's choice, or for a new
   * profile [`ENCRYPT_BY_DEFAULT`].
   */
  encryptStore: boolean | null,
  /**
   * The SSH bastion (`ssh://user@host[:port]`), or empty to connect directly.
   */
  sshAddress: string | null,
  /**
   * The bastion's host key the person accepted (`algorithm base64`); unset keeps the saved one
   * while the address stays the same.
   */
  sshHostKey: string | null,
  /**
   * A new SSH private key (OpenSSH or PEM text), only on its way to the keychain: never shown
   * back, never written to a file.
   */
  sshKey?: Secret | null,
  /**
   * The new key's passphrase, if it has one; same path as the key.
   */
  sshPassphrase?: Secret | null,
};

/**
 * A profile with the state of its secret.
 */
export type ProfileView = {
  /**
   * `host:port`.
   */
  address: string,
  /**
   * Where its password stands.
   */
  secret: SecretState,
  /**
   * Stable id; keys the keychain entry.
   */
  id: string,
  /**
   * Name shown in lists; unique.
   */
  name: string,
  /**
   * Host name, IP address or socket directory.
   */
  host: string,
  /**
   * Port.
   */
  port: number,
  /**
   * Role to log in as.
   */
  user: string,
  /**
   * Database.
   */
  database: string,
  /**
   * TLS policy.
   */
  sslmode: SslMode,
  /**
   * Trusted authorities for verify-ca / verify-full.
   */
  sslrootcert?: string | null,
  /**
   * Server options (Neon: `endpoint=<id>`).
   */
  options?: string | null,
  /**
   * SCRAM channel binding.
   */
  channelBinding: ChannelBinding,
  /**
   * Publication to capture from.
   */
  publication: string,
  /**
   * Replication slot to stream from.
   */
  slot: string,
  /**
   * `application_name` shown in `pg_stat_activity`.
   */
  applicationName: string,
  /**
   * Where the password lives.
   */
  password: PasswordStorage,
  /**
   * The Neon project and branch the database lives in, when linked (enables the Neon fixes).
   */
  neon?: NeonLink | null,
  /**
   * The SSH bastion the database is reached through, if any; its private key is in the keychain.
   */
  ssh?: SshProfile | null,
  /**
   * Whether the profile's store is encrypted at rest ([`crate::store::encryption`]). Profiles saved
   * before encryption existed have plain stores.
   */
  encrypted: boolean,
  /**
   * Saved with "Save without testing": its settings and password have not logged in since they
   * were saved, so nothing shows them as good. Cleared by a save that tests first
   * ([`Profiles::save_checked`]) or that brings a new password from a source that made it.
   */
  untested?: boolean,
};

/**
 * What publishing a [`Request`] takes, for the preview: the statements, every hazard, and in words
 * what happens to each hazardous table.
 */
export type PublicationPlan = {
  /**
   * The request it was made for.
   */
  request: PublicationRequest,
  /**
   * The statements, run in one transaction by [`apply`].
   */
  statements: Array<string>,
  /**
   * Tables without a usable replica identity among those asked for.
   */
  hazards: Array<Hazard>,
  /**
   * One sentence per hazardous table: what the statements do with it.
   */
  notes: Array<string>,
};

/**
 * What to publish: the tables the user picked and how each hazardous one is handled.
 */
export type PublicationRequest = {
  /**
   * The capture's publication.
   */
  publication: string,
  /**
   * The tables to publish.
   */
  tables: Array<TableRef>,
  /**
   * Decisions for the tables that have no usable replica identity.
   */
  choices: Array<Choice>,
  /**
   * `FOR ALL TABLES` instead of `tables` (`setup publication --all-tables`): every table the
   * publication would cover is checked for a usable replica identity first ([`plan`]).
   */
  allTables?: boolean,
};

/**
 * What "Save and publish" followed by starting the capture will do, in order, worked out before
 * anything runs ([`plan_publish`]).
 */
export type PublishPlan = {
  /**
   * The publication's part: exactly the statements [`publish_with`] runs (the same
   * [`crate::source::publication::plan`]), and the tables without a usable replica identity.
   */
  publication: PublicationPlan,
  /**
   * Whether the slot exists already.
   */
  slotExists: boolean,
  /**
   * Whether the profile's capture runs already (it then picks up the new definition: no second
   * capture starts).
   */
  running: boolean,
  /**
   * The bound tables whose existing rows will be read, `"schema"."table"`.
   */
  backfills: Array<string>,
  /**
   * One sentence per step, in the order they run.
   */
  steps: Array<string>,
};

/**
 * What the Consumers tab needs to pull a profile's consumers: the token, revealed because a
 * person clicked "Reveal token", and where and whether the API answers.
 */
export type PullAccess = {
  /**
   * The store's bearer token.
   */
  token: RevealedSecret,
  /**
   * The API's base URL, `http://127.0.0.1:7376`.
   */
  baseUrl: string,
  /**
   * Whether the API answers for this profile now: its capture runs and the server listens.
   */
  serving: boolean,
  /**
   * Why it does not, and what to do.
   */
  problem: string | null,
};

/**
 * Messages fetched by the application through the pull API.
 */
export type PullDestination = {
  /**
   * How long a received message stays invisible before it is offered again unless acknowledged.
   */
  visibilityTimeoutMs: number,
  /**
   * Most messages received and not yet acknowledged at once.
   */
  maxAckPending: number,
  /**
   * Most receive requests waiting at once; more are answered 429.
   */
  maxWaiting: number,
};

/**
 * What removing a profile or discarding its store deleted, for the person who asked.
 */
export type Removed = {
  /**
   * The profile's name.
   */
  profile: string,
  /**
   * Whether the profile itself was removed (not only its store).
   */
  profileRemoved: boolean,
  /**
   * The store folder deleted (captured rows, change log, snapshots, consumers), if there was one.
   */
  store: string | null,
  /**
   * The keychain entries deleted, described for a person ("database password", "store key", …).
   */
  keychainEntries: Array<string>,
  /**
   * The replication slot dropped with a discarded store, if there was one.
   */
  slotDropped: string | null,
};

/**
 * On what grounds the role may open a replication connection.
 */
export type ReplicationRight =
  | { "basis": "superuser" }
  | { "basis": "attribute" }
  | {
    "basis": "membership",
    /**
     * The role that has REPLICATION.
     */
    role: string,
  }
  | { "basis": "none" };

/**
 * A secret deliberately handed to the UI: the password Autofill found in the string the UI just
 * supplied, or a consumer's signing secret or the pull API token a person asked to see
 * ([`crate::app::consumers::ConsumerStore::reveal_signing_secret`],
 * [`crate::app::consumers::ConsumerStore::reveal_pull_token`]). Any other path keeps [`Secret`],
 * which cannot be serialized.
 */
export type RevealedSecret = Secret;

/**
 * Who runs a SQL fix. The statements are the same whoever runs them; only the login differs.
 */
export type RunAs =
  | { "kind": "profile" }
  | {
    "kind": "otherProfile",
    /**
     * Its id or name.
     */
    profile: string,
  }
  | {
    "kind": "password",
    /**
     * The role.
     */
    user: string,
    /**
     * Its password, dropped after the run.
     */
    password: Secret,
  };

/**
 * Where a run stands.
 */
export type RunState = "stopped" | "starting" | "streaming" | "failed";

/**
 * A run's state, as the Capture screen shows it.
 */
export type RunStatus = {
  /**
   * The profile.
   */
  profile: string,
  /**
   * Where it stands.
   */
  state: RunState,
  /**
   * Per collection, its backfill's progress (kept when done, so the screen shows 100%).
   */
  backfills: { [key in string]: BackfillProgress },
  /**
   * Changes stored by this run.
   */
  changes: number,
  /**
   * Store commits by this run.
   */
  commits: number,
  /**
   * The store's checkpoint: everything up to it is durable and confirmed to PostgreSQL.
   */
  checkpoint: string,
  /**
   * Changes per second over the last store commits (about the last 10 s).
   */
  changesPerSecond: number,
  /**
   * Commit-to-stored delay of the newest transaction, in milliseconds.
   */
  lagMs: number | null,
  /**
   * Commit time of the newest stored transaction (microseconds since 2000-01-01, the server's clock).
   */
  lastCommitMicros: number | null,
  /**
   * Why it failed.
   */
  error: BackendError | null,
};

/**
 * What the form's Save does before it stores anything.
 */
export type SaveCheck = "testFirst" | "withoutTesting";

/**
 * A password or key whose value is only reachable through [`Secret::expose`].
 */
export type Secret = string;

/**
 * A secret header's value as typed once in the form, on its way to the keychain.
 */
export type SecretHeaderValue = {
  /**
   * The header's name (one of the webhook's `secretHeaders`).
   */
  name: string,
  /**
   * Its value.
   */
  value: Secret,
};

/**
 * Whether a profile's password can be had without asking, as shown next to it.
 */
export type SecretState = "inKeychain" | "missingFromKeychain" | "askEachTime" | "keychainUnavailable";

/**
 * What [`test_connection`] learns about a server.
 */
export type ServerFacts = {
  /**
   * `server_version`, e.g. `15.18 (Debian 15.18-0+deb12u1)`.
   */
  serverVersion: string,
  /**
   * `server_version_num`, e.g. 150018.
   */
  serverVersionNum: number,
  /**
   * The role the session runs as.
   */
  currentUser: string,
  /**
   * The database connected to.
   */
  database: string,
  /**
   * `wal_level`; logical decoding needs `logical`.
   */
  walLevel: string,
  /**
   * Whether, and why, the role may replicate.
   */
  replication: ReplicationRight,
  /**
   * Whether the session is encrypted.
   */
  tls: boolean,
  /**
   * Time for one `SELECT 1` round trip, in milliseconds.
   */
  roundTripMs: number,
};

/**
 * A fix preflight can offer.
 */
export type SetupAction =
  | { "action": "setWalLevel" }
  | {
    "action": "grantReplication",
    /**
     * The role.
     */
    role: string,
  }
  | {
    "action": "createReplicationRole",
    /**
     * The new role.
     */
    role: string,
  }
  | {
    "action": "grantSchemaAccess",
    /**
     * The schema.
     */
    schema: string,
    /**
     * The role to grant to.
     */
    role: string,
  }
  | {
    "action": "publication",
    /**
     * The tables and the choices.
     */
    request: PublicationRequest,
    /**
     * The statements previewed (from [`crate::source::publication::plan`]).
     */
    statements: Array<string>,
  }
  | {
    "action": "createSlot",
    /**
     * The slot.
     */
    slot: string,
  }
  | {
    "action": "dropSlot",
    /**
     * The slot.
     */
    slot: string,
  }
  | {
    "action": "replicaIdentityFull",
    /**
     * Schema.
     */
    schema: string,
    /**
     * Table.
     */
    table: string,
  }
  | {
    "action": "neonEnableLogicalReplication",
    /**
     * The Neon project.
     */
    projectId: string,
  }
  | {
    "action": "neonCreateRole",
    /**
     * The Neon project.
     */
    projectId: string,
    /**
     * The branch.
     */
    branchId: string,
    /**
     * The new role.
     */
    role: string,
  }
  | {
    "action": "neonRevealPassword",
    /**
     * The Neon project.
     */
    projectId: string,
    /**
     * The branch.
     */
    branchId: string,
    /**
     * The role (the profile's user).
     */
    role: string,
  }
  | {
    "action": "neonResetPassword",
    /**
     * The Neon project.
     */
    projectId: string,
    /**
     * The branch.
     */
    branchId: string,
    /**
     * The role (the profile's user).
     */
    role: string,
  };

/**
 * The slot as the server sees it, and what follows from that.
 */
export type SlotHealth = {
  /**
   * The profile's slot.
   */
  slot: string,
  /**
   * Whether the slot exists.
   */
  exists: boolean,
  /**
   * Whether a client streams from it now.
   */
  active: boolean,
  /**
   * `reserved`, `extended`, `unreserved` or `lost`.
   */
  walStatus: string | null,
  /**
   * WAL the server keeps for the slot (current LSN − `restart_lsn`).
   */
  retainedBytes: number | null,
  /**
   * WAL written but not yet confirmed by the capture (current LSN − `confirmed_flush_lsn`).
   */
  unconfirmedBytes: number | null,
  /**
   * Bytes that can still be written before the slot is at risk of `lost`, when
   * `max_slot_wal_keep_size` is set.
   */
  safeWalSize: number | null,
  /**
   * `max_slot_wal_keep_size` in bytes; `None` when unlimited (-1).
   */
  maxSlotWalKeepBytes: number | null,
  /**
   * Whether the database is on Neon (host or link).
   */
  neon: boolean,
  /**
   * When the capture last made progress (its checkpoint moved), Unix milliseconds.
   */
  lastProgressUnixMs: number | null,
  /**
   * On Neon with an inactive slot: seconds left before Neon removes it (negative when overdue).
   */
  neonRemovalInSecs: number | null,
  /**
   * What to know and do, most serious first.
   */
  warnings: Array<HealthWarning>,
};

/**
 * A column to sort rows by.
 */
export type Sort = {
  /**
   * A column of the collection.
   */
  column: string,
  /**
   * Largest first (NULL first, as PostgreSQL's `DESC`); else smallest first, NULL last.
   */
  descending: boolean,
};

/**
 * How a profile reaches its database through an SSH bastion ([`crate::source::ssh`]). The private key and
 * its passphrase are keychain entries of the profile, never fields here.
 */
export type SshProfile = {
  /**
   * `ssh://user@host:port`.
   */
  address: string,
  /**
   * The bastion's host key a person accepted (`algorithm base64`), if one was.
   */
  hostKey?: string | null,
};

/**
 * How a connection uses TLS; the values and their meanings are libpq's.
 */
export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";

/**
 * A table, by schema and name.
 */
export type TableRef = {
  /**
   * Schema.
   */
  schema: string,
  /**
   * Table.
   */
  table: string,
};

/**
 * One change in a tail: its log position, document, and what the change was.
 */
export type TailEntry = {
  /**
   * Position in the store's log.
   */
  seq: number,
  /**
   * The change document.
   */
  doc: Record<string,
  unknown>,
  /**
   * Its commit LSN, transaction, time and, for an update, what changed (as a page's `changes`).
   */
  info: ChangeInfo,
};

/**
 * What "Send a test message" got back.
 */
export type TestMessageResult = {
  /**
   * The webhook id it was signed under (`msg_test_…`).
   */
  webhookId: string,
  /**
   * The body sent, as the receiver got it.
   */
  body: string,
  /**
   * When it started (Unix ms).
   */
  atMs: number,
  /**
   * Messages it carried (0 for a test message).
   */
  messages: number,
  /**
   * The HTTP status answered, if one was.
   */
  status: number | null,
  /**
   * Why it failed; none when it was acknowledged.
   */
  error: string | null,
  /**
   * How long it took.
   */
  durationMs: number,
  /**
   * A "Send a test message" request, not a delivery.
   */
  test: boolean,
};

/**
 * A request the trial receiver got.
 */
export type TrialRequest = {
  /**
   * When it arrived (Unix ms).
   */
  atMs: number,
  /**
   * Its `webhook-id`.
   */
  webhookId: string,
  /**
   * Whether its `webhook-signature` verifies with a trying consumer's signing secret.
   */
  verified: boolean,
  /**
   * Messages in it (`data`'s length, or 1 for a bare message).
   */
  messages: number,
  /**
   * Each message's action and table (`insert public.orders`), or `test`.
   */
  summary: Array<string>,
  /**
   * The body, pretty-printed, cut at 16 KiB.
   */
  body: string,
};

/**
 * What "Try a webhook" made: the receiver's URL and the consumer pointed at it.
 */
export type TrialWebhook = {
  /**
   * The receiver's URL, on loopback.
   */
  url: string,
  /**
   * The consumer `try-webhook`, delivering every collection to that URL.
   */
  consumer: Consumer,
};

/**
 * What an update changed.
 */
export type UpdateDiff = {
  /**
   * How much of the previous row is known.
   */
  before: BeforeImage,
  /**
   * The columns whose value is known to have changed, in the collection's column order: with
   * the whole previous row every changed column, with the old key the key's changed columns,
   * else none (which columns changed is then not known, and nothing is guessed).
   */
  fields: Array<FieldChange>,
};

/**
 * An HTTP endpoint that receives messages by POST.
 */
export type WebhookDestination = {
  /**
   * `http://` or `https://` URL.
   */
  url: string,
  /**
   * Headers sent with every request (not secret).
   */
  headers: { [key in string]: string },
  /**
   * Names of headers whose values are in the keychain.
   */
  secretHeaders: Array<string>,
  /**
   * Messages per request; `None` sends one bare message per request (no `{"data": [...]}`).
   */
  batchSize: number | null,
  /**
   * How long a request may take before it counts as failed.
   */
  timeoutMs: number,
  /**
   * Failed attempts after which a message is parked; `None` retries forever.
   */
  maxRetries: number | null,
  /**
   * Requests under way at once (each to a different set of groups).
   */
  maxInFlight: number,
};

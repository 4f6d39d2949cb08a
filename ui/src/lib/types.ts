// Transport types: the shapes that cross between the engine (through the desktop shell) and the UI.
// They mirror the engine's serde output; keep them in this one file.

/** Error kinds the engine reports; the UI chooses what to show by kind, never by message text. */
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

/** Every error from the backend reaches the UI as `{kind, message}`. */
export interface BackendError {
  kind: ErrorKind;
  message: string;
}

export type SslMode = "disable" | "allow" | "prefer" | "require" | "verify-ca" | "verify-full";

export const SSL_MODES: SslMode[] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

export type ChannelBinding = "disable" | "prefer" | "require";

export type PasswordStorage = "keychain" | "askEachTime";

/** A profile as the form edits it: Estuary Flow's fields (the password travels separately). */
export interface ProfileDraft {
  name: string;
  address: string;
  user: string;
  database: string;
  sslmode: SslMode;
  sslrootcert: string | null;
  options: string | null;
  channelBinding: ChannelBinding;
  publication: string | null;
  slot: string | null;
  applicationName: string | null;
  passwordStorage: PasswordStorage;
  /** Whether the store is encrypted at rest; null keeps the profile's choice (new profiles: on). */
  encryptStore: boolean | null;
  /** The SSH bastion, `ssh://user@host[:port]`, or null to connect directly. */
  sshAddress: string | null;
  /** The bastion's host key the person accepted (`algorithm base64`); null keeps the saved one. */
  sshHostKey: string | null;
  /** A new private key, sent once on its way to the keychain (never kept in the form's state). */
  sshKey?: string | null;
  /** Its passphrase, same path. */
  sshPassphrase?: string | null;
}

/** How a saved profile reaches its database through an SSH bastion (the key is in the keychain). */
export interface SshProfile {
  address: string;
  hostKey?: string;
}

/** A bastion's host key as shown before it is accepted. */
export interface HostKey {
  target: string;
  openssh: string;
  fingerprint: string;
}

/** Where a saved profile's password stands. */
export type SecretState = "inKeychain" | "missingFromKeychain" | "askEachTime" | "keychainUnavailable";

/** A saved profile as the engine lists it. */
export interface ProfileView {
  id: string;
  name: string;
  host: string;
  port: number;
  user: string;
  database: string;
  sslmode: SslMode;
  sslrootcert?: string;
  options?: string;
  channelBinding: ChannelBinding;
  publication: string;
  slot: string;
  applicationName: string;
  password: PasswordStorage;
  address: string;
  secret: SecretState;
  /** The Neon project and branch the database lives in, when linked. */
  neon?: NeonLink;
  /** Whether its store is encrypted at rest (key in the OS keychain). */
  encrypted: boolean;
  /** Saved with "Save without testing": its settings have not logged in since. */
  untested?: boolean;
  /** The SSH bastion it goes through, if any. */
  ssh?: SshProfile;
}

/** What Save does first: log in with the form's values (nothing is stored if that fails), or not. */
export type SaveCheck = "testFirst" | "withoutTesting";

/** What removing a profile or discarding its store deleted. */
export interface Removed {
  profile: string;
  profileRemoved: boolean;
  store: string | null;
  keychainEntries: string[];
  slotDropped: string | null;
}

/** A profile's link to its Neon project and branch. */
export interface NeonLink {
  projectId: string;
  branchId: string;
}

export interface NeonProject {
  id: string;
  name: string;
  regionId: string;
}

export interface NeonBranch {
  id: string;
  name: string;
  default: boolean;
}

/** Whether a host is one of Neon's (where the Neon part of Setup applies). */
export const isNeonHost = (host: string): boolean => /\.neon\.(tech|build)$/i.test(host);

export type Advice = { kind: "neonPooler"; pooledHost: string; directHost: string };

/** What "Autofill with URL" returns. `password` is the one that was in the pasted text, if any. */
export interface Autofill {
  draft: ProfileDraft;
  password: string | null;
  advice: Advice[];
}

export type KeychainStatus = { state: "available"; backend: string } | { state: "unavailable"; reason: string };

export interface NeonKeyStatus {
  stored: boolean;
}

export type ReplicationRight =
  | { basis: "superuser" }
  | { basis: "attribute" }
  | { basis: "membership"; role: string }
  | { basis: "none" };

/** What "Test connection" learns about a server. */
export interface ServerFacts {
  serverVersion: string;
  serverVersionNum: number;
  currentUser: string;
  database: string;
  walLevel: string;
  replication: ReplicationRight;
  tls: boolean;
  roundTripMs: number;
}

export function isBackendError(value: unknown): value is BackendError {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as BackendError).kind === "string" &&
    typeof (value as BackendError).message === "string"
  );
}

/** A blank form with the engine's defaults. */
export function emptyDraft(): ProfileDraft {
  return {
    name: "",
    address: "",
    user: "",
    database: "postgres",
    sslmode: "prefer",
    sslrootcert: null,
    options: null,
    channelBinding: "prefer",
    publication: null,
    slot: null,
    applicationName: null,
    passwordStorage: "keychain",
    encryptStore: true,
    sshAddress: null,
    sshHostKey: null,
  };
}

/** The form's fields for a saved profile. */
export function draftOf(profile: ProfileView): ProfileDraft {
  return {
    name: profile.name,
    address: profile.address,
    user: profile.user,
    database: profile.database,
    sslmode: profile.sslmode,
    sslrootcert: profile.sslrootcert ?? null,
    options: profile.options ?? null,
    channelBinding: profile.channelBinding,
    publication: profile.publication,
    slot: profile.slot,
    applicationName: profile.applicationName,
    passwordStorage: profile.password,
    encryptStore: profile.encrypted,
    sshAddress: profile.ssh?.address ?? null,
    sshHostKey: profile.ssh?.hostKey ?? null,
  };
}

/** Where a table's key comes from. */
export type KeySource = "primaryKey" | "uniqueIndex" | "none";

export interface DiscoveredColumn {
  name: string;
  typeOid: number;
  typeName: string;
  nullable: boolean;
}

/** A table as discovery proposes it for capture. */
export interface DiscoveredTable {
  schema: string;
  table: string;
  partitioned: boolean;
  columns: DiscoveredColumn[];
  key: string[];
  keySource: KeySource;
  keyIndex: string | null;
  replicaIdentity: string;
  estimatedRows: number | null;
  sizeBytes: number;
  inPublication: boolean;
  collection: { name: string; key: string[]; schema: unknown };
}

/** How a collection starts: its rows backfilled, or only changes from now on. */
export type BindingMode = "full" | "onlyChanges";

/** One table bound to one collection. */
export interface Binding {
  schema: string;
  table: string;
  collection: string;
  mode: BindingMode;
  backfill: number;
}

/** A capture's saved definition. */
export interface CaptureDefinition {
  profile: string | null;
  publication: string;
  slot: string;
  bindings: Binding[];
}

/**
 * How a check came out (the engine's `preflight::Status`): `step` is neutral, something Tidepool does
 * itself when the capture starts (creating the slot it backfills from), never a failure.
 */
export type CheckStatus = "pass" | "warn" | "fail" | "step";

/** A setup fix; the engine's tagged `Action`, sent back as it came when the user confirms. */
export type SetupAction = { action: string } & Record<string, unknown>;

/** A table by schema and name. */
export interface TableRef {
  schema: string;
  table: string;
}

/**
 * How a table without a usable replica identity is published: left out (the safe default), REPLICA
 * IDENTITY FULL first, or only its inserts (in the companion publication `<publication>_insert_only`).
 */
export type Handling = "leaveOut" | "replicaIdentityFull" | "insertOnly";

/** The user's decision for one table. */
export interface Choice extends TableRef {
  handling: Handling;
}

/** What to publish: the picked tables and the decisions. */
export interface PublicationRequest {
  publication: string;
  tables: TableRef[];
  choices: Choice[];
}

/** A picked table whose UPDATE and DELETE PostgreSQL would refuse once published with them. */
export interface Hazard {
  table: TableRef;
  reason: string;
  relations: TableRef[];
  /** A publication covers it already: its writes are refused now. */
  refusedNow: boolean;
  options: Handling[];
  handling: Handling | null;
}

/** What publishing a request runs, with every hazard and what happens to each, in words. */
export interface PublicationPlan {
  request: PublicationRequest;
  statements: string[];
  hazards: Hazard[];
  notes: string[];
}

/** What one-click "Save and publish" will do, in order, before anything runs. */
export interface PublishPlan {
  /** The publication's part: exactly the statements that run. */
  publication: PublicationPlan;
  slotExists: boolean;
  /** The capture runs already: it picks up the new definition, no second capture starts. */
  running: boolean;
  /** The tables whose existing rows will be read, `"schema"."table"`. */
  backfills: string[];
  /** One sentence per step, in the order they run. */
  steps: string[];
}

/** A fix with the exact SQL or API request it runs, and what to know before confirming. */
export interface Fix {
  action: SetupAction;
  preview: string[];
  warning: string | null;
  /** The rights the role that runs it needs; when the profile's role lacks them, run it as an owner. */
  needs?: string;
  /** The publication fix's plan (absent for other fixes). */
  plan?: PublicationPlan;
}

/**
 * Who runs a SQL fix: the profile's own role, another saved profile for the same database (by id), or
 * a role whose password is typed for this run and not kept.
 */
export type RunAs =
  | { kind: "profile" }
  | { kind: "otherProfile"; profile: string }
  | { kind: "password"; user: string; password: string };

/** One preflight check, with its fix and the exact SQL or API request the fix runs. */
export interface PreflightCheck {
  id: string;
  title: string;
  status: CheckStatus;
  explanation: string;
  fix: Fix | null;
}

/** How far one table's backfill is. */
export interface BackfillProgress {
  collection: string;
  rows: number;
  estimatedRows: number | null;
  rowsPerSecond: number;
  secondsLeft: number | null;
  done: boolean;
}

export type RunState = "stopped" | "starting" | "streaming" | "failed";

/** A capture running in the app, as the engine reports it (also pushed as `capture-status` events). */
export interface RunStatus {
  profile: string;
  state: RunState;
  backfills: Record<string, BackfillProgress>;
  changes: number;
  commits: number;
  checkpoint: string;
  changesPerSecond: number;
  lagMs: number | null;
  lastCommitMicros: number | null;
  error: BackendError | null;
}

/** A collection with its counts. */
export interface CollectionInfo {
  name: string;
  rows: number;
  changes: number;
  /** When the newest change happened at the source, Unix ms. */
  lastChangeMs: number | null;
}

export interface CollectionSpec {
  name: string;
  schema: string;
  table: string;
  key: string[];
  columns: { name: string; typeOid: number }[];
}

export type CollectionView = "rows" | "changes";

/** One page of a collection's documents. */
export interface Page {
  collection: CollectionSpec;
  documents: Record<string, unknown>[];
  /** The change log: what each document's change was, one per document in the same order (empty for rows). */
  changes: ChangeInfo[];
  lastSeq: number;
  /** Rows in key order: the key of the last row read, the cursor of the next page. */
  lastKey: string | null;
  /** Whether a next page may have more. */
  hasMore: boolean;
}

/** How much of an updated row's previous version a change carries (`tidepool::preview::BeforeImage`). */
export type BeforeImage = "full" | "key" | "unknown";

/** One changed column of an update. */
export interface FieldChange {
  name: string;
  /** Absent when the value is too long to repeat (over 4 KiB): it is in the document. */
  before?: unknown;
  after?: unknown;
}

/** What an update changed, as far as its before image goes. */
export interface UpdateDiff {
  before: BeforeImage;
  fields: FieldChange[];
}

/** What one change-log entry was (`tidepool::preview::ChangeInfo`). */
export interface ChangeInfo {
  seq: number;
  /** `c`, `u`, `d` or `t`. */
  op: string;
  /** A row read by the backfill: `lsn` is the snapshot's point, `committedMs` when it was read, no transaction. */
  snapshot: boolean;
  lsn: string | null;
  xid: number | null;
  committedMs: number | null;
  update: UpdateDiff | null;
}

/** A column to sort rows by (in the engine). */
export interface Sort {
  column: string;
  descending: boolean;
}

/** Which page of a collection to read. */
export interface PageRequest {
  view: CollectionView;
  after: number | null;
  afterKey: string | null;
  limit: number;
  /** A CEL expression, the consumers' filter language (`record`, `changes`, `action`, `metadata`). */
  filter: string | null;
  /** Rows: in this column's order; the page starts `offset` rows in. */
  sort: Sort | null;
  offset: number;
}

export type ExportFormat = "jsonl" | "csv";

/** What an export wrote. */
export interface Exported {
  path: string;
  documents: number;
}

/** An engine a capture can be handed to (`tidepool::export::Engine`). */
export type Engine = "estuary" | "sequin";

/** A capture written as another engine's file (`tidepool::export::ExportFile`). */
export interface ExportFile {
  engine: Engine;
  /** `flow.yaml` or `sequin.yaml`. */
  fileName: string;
  /** Comments saying what to fill in and what the engine does differently, then the YAML. */
  text: string;
}

/** A change pushed by a live tail. */
export interface TailEntry {
  seq: number;
  doc: Record<string, unknown>;
  info: ChangeInfo;
}

/** How serious a slot warning is. */
export type HealthLevel = "info" | "warn" | "danger";

/** One thing to know about the slot, with what to do. */
export interface HealthWarning {
  id: string;
  level: HealthLevel;
  message: string;
}

/** The capture slot as the server sees it (see the engine's `health` module). */
export interface SlotHealth {
  slot: string;
  exists: boolean;
  active: boolean;
  walStatus: string | null;
  retainedBytes: number | null;
  unconfirmedBytes: number | null;
  safeWalSize: number | null;
  maxSlotWalKeepBytes: number | null;
  neon: boolean;
  lastProgressUnixMs: number | null;
  neonRemovalInSecs: number | null;
  warnings: HealthWarning[];
}

// Consumers (engine: deliver::consumer, consumers::ConsumerView / FilterCheck).

/** What a change did, as Sequin names it; `read` is a backfilled row. */
export type ConsumerAction = "insert" | "update" | "delete" | "read";

export const CONSUMER_ACTIONS: ConsumerAction[] = ["insert", "update", "delete", "read"];

/** Every change, or the latest state of each row. */
export type ConsumerMode = "changes" | "rows";

/** Where a new consumer starts: after what is stored now, or from the stored history's beginning. */
export type ConsumerStart = "now" | "beginning";

/** HTTP push: secret headers are names only; their values are in the keychain. */
export interface WebhookDestination {
  type: "webhook";
  url: string;
  headers: Record<string, string>;
  secretHeaders: string[];
  /** Messages per request in `{"data": [...]}`; null sends one bare message per request. */
  batchSize: number | null;
  timeoutMs: number;
  /** Failed attempts before a message is parked; null retries forever. */
  maxRetries: number | null;
  maxInFlight: number;
}

/** HTTP pull through the Sequin-compatible API. */
export interface PullDestination {
  type: "pull";
  visibilityTimeoutMs: number;
  maxAckPending: number;
  maxWaiting: number;
}

/** How Tidepool proves who it is to a NATS server; the secret itself is in the keychain. */
export type NatsAuth =
  | { kind: "none" }
  | { kind: "token" }
  | { kind: "userPassword"; user: string }
  | { kind: "nkey" }
  | { kind: "creds" };

/** Publish to NATS JetStream: one subject per table and action, `Nats-Msg-Id` = the idempotency key. */
export interface NatsDestination {
  type: "nats";
  /** `nats://host:port` or `tls://host:port`, several separated by commas. */
  url: string;
  /** A template with {database}, {schema}, {table} and {action}. */
  subject: string;
  /** A stream Tidepool creates if it is missing; null means one the user made must capture the subjects. */
  stream: string | null;
  auth: NatsAuth;
  tls: boolean;
  /** A PEM file of the authority that signed the server's certificate; null trusts the system's. */
  caFile: string | null;
  timeoutMs: number;
  batchSize: number;
  maxRetries: number | null;
}

/** The default subject template (the engine's `DEFAULT_NATS_SUBJECT`). */
export const DEFAULT_NATS_SUBJECT = "tidepool.{schema}.{table}.{action}";

export type ConsumerDestination = WebhookDestination | PullDestination | NatsDestination;

/** A consumer as a person defines it ("Create consumer" sends this). */
export interface ConsumerSpec {
  name: string;
  collections: string[];
  /** Empty means every action. */
  actions: ConsumerAction[];
  filter: string | null;
  mode: ConsumerMode;
  start: ConsumerStart;
  /** Columns that group messages; empty means the row's key. */
  groupBy: string[];
  destination: ConsumerDestination;
}

/** Something a consumer's user must know (changes it missed, a gap it crosses). */
export interface ConsumerNotice {
  kind: ErrorKind;
  message: string;
  atMs: number;
}

/** A saved consumer: its definition, id and where it stands. */
export interface Consumer extends ConsumerSpec {
  id: string;
  /** The last log position read into its queue. */
  position: number;
  /** Messages waiting or in flight. */
  pending: number;
  /** Messages parked after their last retry. */
  failed: number;
  notices: ConsumerNotice[];
  /** Paused by hand: nothing is delivered, its messages stay queued. */
  paused: boolean;
}

/** One request a consumer's delivery made (or a test message), newest first on its page. */
export interface DeliveryAttempt {
  /** When it started (Unix ms). */
  atMs: number;
  /** Messages it carried (0 for a test message). */
  messages: number;
  /** The HTTP status answered, if one was. */
  status: number | null;
  /** Why it failed; null when acknowledged. */
  error: string | null;
  durationMs: number;
  test: boolean;
}

/** What a consumer delivered in one second (seconds without deliveries have none). */
export interface DeliverySample {
  /** Unix seconds. */
  second: number;
  delivered: number;
  /** Mean commit → delivered latency. */
  latencyAvgMs: number;
  latencyMaxMs: number;
}

/** A consumer page's recent requests and per-second samples (engine: consumers::ConsumerActivity). */
export interface ConsumerActivity {
  attempts: DeliveryAttempt[];
  samples: DeliverySample[];
  /** When it was read (Unix ms). */
  nowMs: number;
}

/** What "Send a test message" got back (engine: deliver::webhook::TestResult). */
export interface TestMessageResult extends DeliveryAttempt {
  /** The webhook-id it was signed under (`msg_test_…`). */
  webhookId: string;
  /** The body sent. */
  body: string;
}

/** A request the app's "Try a webhook" receiver got (engine: deliver::trial::TrialRequest). */
export interface TrialRequest {
  atMs: number;
  webhookId: string;
  /** Whether its signature verifies with the consumer's signing secret. */
  verified: boolean;
  messages: number;
  /** Each message's action and table ("insert shop.orders"), or "test". */
  summary: string[];
  /** The body, pretty-printed (cut at 16 KiB). */
  body: string;
}

/** What "Try a webhook" made: the app's receiver URL and the consumer pointed at it. */
export interface TrialWebhook {
  url: string;
  consumer: Consumer;
}

/** A message parked after its last retry. */
export interface ParkedMessage {
  seq: number;
  ackId: string;
  attempts: number;
  lastError: string | null;
  message: unknown;
}

/** A consumer as the Consumers tab lists it. */
export interface ConsumerView extends Consumer {
  parked: ParkedMessage[];
}

/** A secret header's value, typed once, on its way to the keychain. */
export interface SecretHeaderValue {
  name: string;
  value: string;
}

/** Why a filter is refused, with its 1-based position when it has one. */
export interface FilterProblem {
  message: string;
  line: number | null;
  column: number | null;
}

/** How a valid filter fares on a collection's newest changes. */
export interface FilterPreview {
  collection: string;
  tried: number;
  kept: number;
}

/** The answer to "Check" on a filter. */
export interface FilterCheck {
  problem: FilterProblem | null;
  preview: FilterPreview[];
}

/** "Reveal token" on a pull consumer (engine: `tidepool::run::PullAccess`). */
export interface PullAccess {
  /** The store's bearer token, read from the keychain on this request only. */
  token: string;
  /** The pull API's base URL, e.g. `http://127.0.0.1:7376`. */
  baseUrl: string;
  /** Whether the API answers for this connection now: its capture runs and the server listens. */
  serving: boolean;
  /** Why it does not, and what to do. */
  problem: string | null;
}

import type { ChangeInfo, CollectionSpec, ProfileView, RunStatus, SlotHealth } from "../lib/types";

/** A saved profile as the engine lists it, with any fields overridden. */
export const profileView = (overrides: Partial<ProfileView> = {}): ProfileView => ({
  id: "p1",
  name: "Shop",
  host: "db.example.com",
  port: 5432,
  user: "cdc_role",
  database: "shop",
  sslmode: "require",
  channelBinding: "prefer",
  publication: "tidepool_publication",
  slot: "tidepool_slot",
  applicationName: "tidepool",
  password: "keychain",
  address: "db.example.com:5432",
  secret: "inKeychain",
  encrypted: true,
  ...overrides,
});

/** A slot's health as the engine reads it: a healthy, active slot, with any fields overridden. */
export const slotHealth = (overrides: Partial<SlotHealth> = {}): SlotHealth => ({
  slot: "tidepool_slot",
  exists: true,
  active: true,
  walStatus: "reserved",
  retainedBytes: 2 * 1048576,
  unconfirmedBytes: 0,
  safeWalSize: null,
  maxSlotWalKeepBytes: null,
  neon: false,
  lastProgressUnixMs: null,
  neonRemovalInSecs: null,
  warnings: [],
  ...overrides,
});

/** A capture's status as the engine pushes it: stopped, nothing counted yet, with any fields overridden. */
export const runStatus = (overrides: Partial<RunStatus> = {}): RunStatus => ({
  profile: "p1",
  state: "stopped",
  backfills: {},
  changes: 0,
  commits: 0,
  checkpoint: "",
  changesPerSecond: 0,
  lagMs: null,
  lastCommitMicros: null,
  error: null,
  ...overrides,
});

/** A change's info as the engine sends it. */
export function changeInfo(seq: number, op: string, extra: Partial<ChangeInfo> = {}): ChangeInfo {
  return { seq, op, snapshot: false, lsn: `0/${(0x16b3700 + seq).toString(16).toUpperCase()}`, xid: 700 + seq, committedMs: Date.UTC(2026, 10, 23, 9, 30, seq), update: null, ...extra };
}

/** The collection the Collections tests page through: `public/items`, keyed by `id`. */
export const itemsSpec: CollectionSpec = {
  name: "public/items",
  schema: "public",
  table: "items",
  key: ["id"],
  columns: [
    { name: "id", typeOid: 23 },
    { name: "name", typeOid: 25 },
    { name: "body", typeOid: 25 },
  ],
};

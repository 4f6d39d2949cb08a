import type { ProfileView } from "../lib/types";

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

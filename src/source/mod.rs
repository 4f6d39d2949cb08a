//! The source: the user's PostgreSQL or Neon database, and everything about reaching, checking and
//! reading it. Addresses and connection strings as people paste them, TLS as libpq means it, SSH
//! bastions, the Neon API, the preflight checks and the fixes they offer, publications and slots,
//! discovery of tables, slot health, the replication connection and its pgoutput decoder, and the
//! check that a slot still continues the store.
//!
//! A folder of its own modules only: each is a node of its own in the import-loop test
//! (`module_graph`), so the folder groups them for a reader without hiding a loop between them.

pub mod address;
pub mod connection;
pub mod conninfo;
pub mod continuity;
pub mod discovery;
pub mod health;
pub mod neon;
pub mod pgoutput;
pub mod pgpass;
pub mod preflight;
pub mod publication;
pub mod replication;
pub mod setup;
pub mod slot;
pub mod sql;
pub mod ssh;
pub mod tls;
pub mod wire;

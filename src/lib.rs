//! Tidepool's engine: from a PostgreSQL or Neon database to a live, local, queryable stream of its
//! changes. Everything the desktop app can do is a call into this crate, so it can be tested without a
//! window and done from the `tidepool` command line.
//!
//! Modules are named after the domain. Errors are [`Error`] values with a [`ErrorKind`] to match on.

pub mod address;
pub mod backfill;
pub mod binding;
pub mod capture;
pub mod cluster;
pub mod connection;
pub mod conninfo;
pub mod consumers;
pub mod continuity;
pub mod deliver;
pub mod demo;
pub mod discovery;
pub mod document;
pub mod encryption;
pub mod error;
pub mod export;
pub mod health;
pub mod large_value;
mod module_graph;
pub mod neon;
pub mod owner_only;
pub mod pgoutput;
pub mod pgpass;
pub mod preflight;
pub mod preview;
pub mod preview_filter;
pub mod profile;
pub mod publication;
pub mod replication;
pub mod retention;
pub mod rowkey;
pub mod run;
pub mod secrets;
pub mod setup;
pub mod slot;
pub mod snapshot;
pub mod sql;
pub mod ssh;
pub mod store;
pub mod store_lock;
pub mod tls;
pub mod typescript;
pub mod value;

pub use error::{Error, ErrorKind, Result};

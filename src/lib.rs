//! Tidepool's engine: from a PostgreSQL or Neon database to a live, local, queryable stream of its
//! changes. Everything the desktop app can do is a call into this crate, so it can be tested without a
//! window and done from the `tidepool` command line.
//!
//! Modules are named after the domain. Errors are [`Error`] values with a [`ErrorKind`] to match on.

pub mod app;
pub mod binding;
pub mod capture;
pub mod deliver;
pub mod document;
pub mod error;
mod module_graph;
pub mod owner_only;
pub mod secrets;
pub mod source;
pub mod store;
pub mod typescript;

pub use error::{Error, ErrorKind, Result};

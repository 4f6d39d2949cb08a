//! What the desktop app and the command line work with: saved profiles (and the preflight, fixes,
//! discovery, publish and Neon actions on them), the captures running in this process, the demo
//! database, the preview of a store, the consumers as a person manages them, and the exports to
//! Estuary Flow and Sequin.
//!
//! A folder of its own modules only: each is a node of its own in the import-loop test
//! (`module_graph`), so the folder groups them for a reader without hiding a loop between them.

pub mod api;
pub mod cluster;
pub mod consumers;
pub mod demo;
pub mod export;
pub mod preview;
pub mod preview_filter;
pub mod profile;
pub mod run;

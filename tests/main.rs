//! Engine integration tests against real PostgreSQL 15 clusters started by the tests themselves.
//! One binary (one cluster start-up per variant); each test works in its own database.

mod harness;

mod backfill;
mod capture;
mod cli;
mod connection;
mod consumer_page;
mod consumers;
mod continuity;

mod deliver;
mod demo;
mod discovery;
mod encryption;
mod export;
mod hygiene;
mod identity;
mod large_values;
mod nats;
mod neon;
mod neon_api;
mod owner_only;
mod preview;
mod profiles;
mod publication;
mod pull_app;
mod run;
mod setup;
mod ssh;
mod tls;
mod torture;

//! `jitocsp migrate` and `jitocsp admin ...`, run as the real binary against real Postgres and
//! Redis (`DATABASE_URL`, `REDIS_URL`; when unset, read from `.local/env`, which
//! `scripts/services.sh` writes).
//!
//! Every test creates its own issuer with a unique name, from certificates that openssl makes
//! in a temporary directory, so the tests run in parallel on one database. Each fixture is a
//! [`Site`]: the admin commands and any responder it starts read one configuration file, as in
//! production, so a purge is checked against the keys a real responder wrote.

#[path = "../common/mod.rs"]
mod common;
mod fixture;

mod bulk;
mod import;
mod issuer;
mod migrate;
mod purge;
mod revoke;

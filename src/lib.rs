//! # jitocsp — a just-in-time OCSP responder
//!
//! Postgres holds the authoritative status of every certificate; responses are signed on
//! demand, cached in Redis (shared by every instance) and, optionally, in a small in-process
//! tier. Losing Redis costs signatures, never correctness. This is the design Let's Encrypt
//! moved to in 2022 so that its origin could absorb a full CDN cache drop.
//!
//! ## Map (read this first)
//!
//! A newcomer reads, in this order: this map, [`pipeline`] (the whole request decision in one
//! file), [`feed::log`] (why a revoked certificate is never answered "good"), and
//! [`status`] (how a status changes). Everything else is one concept per module.
//!
//! Protocol, no I/O:
//! - [`ocsp`]: decode and encode requests ([`ocsp::request`]), encode and assemble
//!   responses ([`ocsp::response`]), the few DER primitives ([`ocsp::der`]) and OIDs
//!   ([`ocsp::oids`]).
//! - [`serial`]: the one canonical form of a serial number (Postgres key, Redis key, hex).
//! - [`entry`]: a signed response as cached, with its ETag and times precomputed.
//! - [`x509`]: reading issuer certificates and computing their CertID hashes.
//!
//! The request path:
//! - [`http`]: the OCSP listener (GET path decoding in [`http::get`], caching headers and
//!   304s in [`http::headers`]).
//! - [`pipeline`]: **the whole decision in one file**: issuer match, local tier, Redis,
//!   single flight, Postgres, signing, Redis write, and what to do when any of them fails.
//!   Requests that cannot share a cached response (several CertIDs, a nonce) are
//!   `pipeline/fresh.rs`.
//! - [`issuers`]: the issuers served, matched by precomputed CertID hashes.
//! - [`cache`]: the [`cache::ResponseCache`] trait, its Redis implementation
//!   ([`cache::redis`]), the local tier ([`cache::local`]) with its front keyed by the raw
//!   request ([`cache::raw`]), and the key and purge-tag layout ([`cache::keys`]).
//! - [`store`]: the [`store::StatusStore`] trait and its Postgres implementation (point
//!   reads batched by [`store::batch`], one batcher and pool per HTTP worker by
//!   [`store::per_runtime`]).
//! - [`signer`]: the [`signer::Signer`] trait, opened from a spec with the public key it
//!   must match: a key file ([`signer::software`]) or an HSM ([`signer::pkcs11`]: session
//!   pool, key lookup, module registry); [`signer::limiter`] bounds how many signatures
//!   run and wait at once.
//!
//! Keeping caches honest:
//! - [`feed`]: the status-change feed. [`feed::payload`] is the `jitocsp_status`
//!   notification; [`feed::listener`] hears committed changes, applies them, and proves once
//!   a second that it still hears them (a heartbeat through the same connection);
//!   [`feed::log`] remembers the changes by status version, so that no response signed from
//!   a row older than a change is served after it, and holds the feed's proof of life and
//!   the primary's WAL positions that bound replica reads.
//! - [`purge`]: deleting copies a change made wrong: Redis keys and the pending-purge
//!   bookkeeping with its retry ([`purge::pending`]), and the CDN purge hook
//!   ([`purge::cdn`]).
//!
//! Changing a status:
//! - [`status`]: import, revoke, unrevoke and the keyCompromise reason change as a library
//!   (plan in, outcome out; the transaction rules are documented there).
//! - [`admin`]: the operator's CLI; it parses, builds a plan, and prints the outcome.
//! - [`audit`]: the audit trail's hash chain and `admin audit --verify`.
//! - [`db`]: Postgres connections outside the responders' pools, the migrations
//!   ([`db::migrate`]), and the SQL, one submodule per table.
//!
//! Around it:
//! - [`server`]: `jitocsp serve` wiring, the metrics/health/readiness listener.
//! - [`config`]: the TOML file overlaid by the environment into serde section structs
//!   (`config/sections.rs`), password files and URL redaction (`secrets.rs`), range and
//!   BR 4.9.10 checks (`validate.rs`). [`secret_file`]: secrets are read only from files
//!   their owner alone can read. [`metrics`]: metric names.
//! - [`runtime_local`]: values kept per thread and runtime, so that the Redis and Postgres
//!   connections are driven on the HTTP worker that uses them.
//! - [`tls`]: the rustls client settings (CA, client certificate) shared by Postgres and
//!   Redis; [`db::tls`] reads `sslmode` and makes the Postgres connector.
//!
//! ## One request, start to end
//!
//! 1. [`http`] asks the raw-request tier about the GET path or POST body as it arrived
//!    ([`pipeline::Responder::answer_again`]: a request seen before, still servable, is
//!    answered here, step 6). Otherwise it takes the DER from the path or body (or answers
//!    malformedRequest) and [`ocsp::request::parse`] turns it into CertIDs and a nonce.
//! 2. [`pipeline::Responder::answer`]: a single CertID without a nonce to echo (nearly all
//!    traffic) goes the cached way; anything else is read and signed fresh, never cached.
//! 3. The CertID's issuer hashes are looked up in [`issuers::IssuerSet`]; no match is
//!    unauthorized, and no signature is ever made for it.
//! 4. The local tier, then Redis, are asked for the response of (issuer, serial, CertID
//!    form). A hit is served if it passes the freshness rules (before nextUpdate, not past
//!    the expiry grace, not contradicted by a later status change, not due for refresh).
//! 5. On a miss, the request joins the single flight for that certificate, or starts it:
//!    one Postgres point read, one signature within the signing limits, one Redis SET with a
//!    TTL to nextUpdate. Every joined request gets the same bytes.
//! 6. [`http::headers`] adds Last-Modified, Expires, Cache-Control, ETag and the purge tag,
//!    or answers 304.
//!
//! A revocation (`jitocsp admin revoke`) commits the new status, stamped with a status
//! version, with an audit row, a pending-purge row and a `NOTIFY` carrying the version, then
//! deletes the Redis keys. Every responder hears the notification, drops its copies and
//! remembers the change, so a lost purge, a response signed just before the commit, or a
//! status read from a lagging replica can never be served afterwards.

pub mod admin;
pub mod audit;
pub mod cache;
pub mod config;
pub mod db;
pub mod entry;
pub mod feed;
pub mod http;
pub mod issuers;
pub mod metrics;
pub mod ocsp;
pub mod pipeline;
pub mod purge;
pub mod runtime_local;
pub mod secret_file;
pub mod serial;
pub mod server;
pub mod signer;
pub mod status;
pub mod store;
pub mod tls;
pub mod x509;

/// The test-environment probe the integration tests use (tests/common/skip.rs): unit tests
/// that run openssl skip without it, and fail without it under scripts/test.sh.
#[cfg(test)]
#[path = "../tests/common/skip.rs"]
mod test_env;

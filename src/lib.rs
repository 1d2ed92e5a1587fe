//! # jitocsp — a just-in-time OCSP responder
//!
//! Postgres holds the authoritative status of every certificate; responses are signed on
//! demand, cached in Redis (shared by every instance) and, optionally, in a small in-process
//! tier. Losing Redis costs signatures, never correctness. This is the design Let's Encrypt
//! moved to in 2022 so that its origin could absorb a full CDN cache drop.
//!
//! ## Map (read this first)
//!
//! Protocol, no I/O:
//! - [`ocsp`]: decode requests ([`ocsp::request`]), encode and assemble responses
//!   ([`ocsp::response`]), the few DER primitives ([`ocsp::der`]) and OIDs ([`ocsp::oids`]).
//! - [`serial`]: the one canonical form of a serial number (Postgres key, Redis key, hex).
//! - [`entry`]: a signed response as cached, with its ETag and times precomputed.
//!
//! The request path:
//! - [`http`]: the OCSP listener (GET path decoding in [`http::get`], caching headers and
//!   304s in [`http::headers`]).
//! - [`pipeline`]: **the whole decision in one file**: issuer match, local tier, Redis,
//!   single flight, Postgres, signing, Redis write, and what to do when any of them fails.
//! - [`issuers`]: the issuers served, matched by precomputed CertID hashes.
//! - [`cache`]: the [`cache::ResponseCache`] trait, its Redis implementation
//!   ([`cache::redis`]), the local tier ([`cache::local`]) and the key layout
//!   ([`cache::keys`]).
//! - [`store`]: the [`store::StatusStore`] trait and its Postgres implementation.
//! - [`signer`]: the [`signer::Signer`] trait and the software signer; [`signing`] bounds
//!   how many signatures run and wait at once.
//!
//! Keeping caches honest:
//! - [`notify`]: the payload of the `jitocsp_status` Postgres notification.
//! - [`listener`]: hears committed changes and applies them, and proves once a second that
//!   it still hears them (a heartbeat through the same connection); [`changes`] remembers
//!   the changes by status version, so that no response signed from a row older than a change
//!   is served after it, and holds the feed's proof of life and the primary's WAL positions
//!   that bound replica reads.
//! - [`purges`]: the pending-purge bookkeeping (one settle rule for the CLI and the
//!   responders) and the retry of Redis purges that a revocation could not complete.
//! - [`hooks`]: the CDN purge hook: purges owed by status changes, called and retried.
//!
//! Around it:
//! - [`server`]: `jitocsp serve` wiring, the metrics/health/readiness listener.
//! - [`admin`]: the admin CLI (issuers, import, revoke, unrevoke, status, purge, audit).
//! - [`migrate`]: applies `sql/`. [`issuer`]: reading certificates, CertID hashes.
//! - [`config`]: the TOML file overlaid by the environment into serde section structs
//!   (`config/sections.rs`), password files and URL redaction (`secrets.rs`), range and
//!   BR 4.9.10 checks (`validate.rs`). [`metrics`]: metric names.
//! - [`tls`]: the rustls client settings (CA, client certificate) shared by Postgres and
//!   Redis; [`db::tls`] reads `sslmode` and makes the Postgres connector.
//!
//! ## One request, start to end
//!
//! 1. [`http`] takes the DER from the GET path or POST body (or answers malformedRequest)
//!    and [`ocsp::request::parse`] turns it into CertIDs and an optional nonce.
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
pub mod secret_file;
pub mod serial;
pub mod server;
pub mod signer;
pub mod store;
pub mod tls;
pub mod x509;

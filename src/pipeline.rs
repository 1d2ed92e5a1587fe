//! The request pipeline: how one OCSP request becomes one OCSP response.
//!
//! ```text
//! raw tier ─► decode ─► issuer match ─► local tier ─► Redis ─► single flight ─► Postgres ─► sign ─► Redis SET
//!   │ hit                  │ none          │ hit         │ hit     │ join            │ no row / expired
//!   ▼                      ▼               ▼             ▼         ▼                 ▼
//! serve               unauthorized      serve         serve     share result     unissued policy / unauthorized
//! ```
//!
//! The raw tier ([`crate::cache::raw`]) answers a request seen before byte for byte (the same
//! GET path or POST body) without decoding it: [`Responder::answer_again`]. It holds only what
//! the rest of this pipeline served as a cacheable response to that request, each entry bound
//! to the issuer set it was matched in, and applies the same freshness rules on every hit.
//!
//! Every cached response passes `Responder::freshness` before it is served: never past its
//! nextUpdate, never for a certificate expired beyond the grace, never if a status change with
//! a higher version than the row it was signed from has been heard of, only after the primary
//! confirms it while the change feed is not proven alive or while it may be older than a change
//! this responder had to forget (the change log was full: see [`crate::feed::log`]), and
//! re-signed once older than `refresh_after` (the old one is still served if re-signing fails,
//! as it is still valid).
//!
//! Status reads go to the read replica, and fall back to the primary when the replica cannot
//! be shown to be current enough (`Responder::read_statuses`): when it lags more than
//! [`crate::feed::log::MAX_REPLICA_LAG`], when its row is older than a change already heard of,
//! or when the change feed is down (then nothing says which changes it may be missing).
//!
//! Misses for the same certificate are coalesced: the first starts a flight (one Postgres
//! read, one signature, one Redis write); the others wait for it. For a few seconds after it
//! lands, its result still answers requests that Redis could not: latecomers whose GET raced
//! the SET, and, when Redis is slow or down under a burst, everyone, instead of each Redis
//! timeout turning into another signature.
//!
//! Requests that cannot share a cached response (several CertIDs, or a nonce to echo) are
//! answered by [`Responder::answer_fresh`] (in `pipeline/fresh.rs`): read, sign, never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use futures_util::future::{BoxFuture, FutureExt, Shared};

use crate::cache::keys::purge_tag;
use crate::cache::keys::response_key;
use crate::cache::local::{LocalTier, ResponseId};
use crate::cache::raw::{RawEntry, RawRequest, RawTier};
use crate::cache::ResponseCache;
use crate::config::{NoncePolicy, ResponsesConfig, UnissuedPolicy};
use crate::entry::{CachedResponse, Facts};
use crate::feed::listener::Subscriber;
use crate::feed::log::{ChangeLog, Heard, ReadStart, Verdict};
use crate::issuers::{Issuer, IssuerSet, LiveIssuers};
use crate::metrics as m;
use crate::ocsp::request::{OcspRequest, RequestedCert};
use crate::ocsp::response::{assemble, encode_response_data, CertStatusAnswer, SingleAnswer};
use crate::ocsp::OcspErrorStatus;
use crate::serial::Serial;
use crate::signer::limiter::SigningLimiter;
use crate::store::{CertRecord, ReadFrom, StatusStore};

/// How long a freshly signed response answers misses and Redis failures in-process.
const RECENT_TTL: Duration = Duration::from_secs(10);
/// How many freshly signed responses are kept for that (about 1 KiB each).
const RECENT_ENTRIES: usize = 16 * 1024;
/// How many times a response is read and signed again because a status change was heard
/// while it was being signed, before the request gets tryLater.
const SIGNING_ATTEMPTS: usize = 3;

/// What the HTTP layer sends back.
#[derive(Clone, Debug)]
pub enum Answer {
    Response {
        response: Arc<CachedResponse>,
        caching: Caching,
        /// When this responder heard of the certificate's latest status change, if it still
        /// remembers one (Unix seconds). A date validator (`If-Modified-Since`) from before
        /// then cannot tell a copy with the old status from this one (see `http::headers`).
        changed_at: Option<i64>,
    },
    Error(OcspErrorStatus),
}

/// How shared caches (the CDN) may keep a successful response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Caching {
    /// Cacheable until nextUpdate (capped by `responses.max_age_cap`).
    Public,
    /// Signed for this request only and not kept anywhere: an answer for an unissued serial,
    /// which must not outlive the certificate's issuance.
    NoCache,
    /// Echoes the request's nonce: useless to anyone else.
    NoStore,
}

/// Why a miss could not be answered. Cloneable, as every request joined to a flight gets it.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status:?}: {reason}")]
pub struct Failure {
    pub status: OcspErrorStatus,
    pub reason: Arc<str>,
}

impl Failure {
    fn try_later(reason: impl std::fmt::Display) -> Self {
        Failure { status: OcspErrorStatus::TryLater, reason: reason.to_string().into() }
    }

    /// A bug, not a passing condition: asking again would not help.
    fn internal_error(reason: impl std::fmt::Display) -> Self {
        Failure { status: OcspErrorStatus::InternalError, reason: reason.to_string().into() }
    }
}

/// The result of a flight: a response, or a definite refusal (no signature made).
#[derive(Clone, Debug)]
enum Produced {
    Response { response: Arc<CachedResponse>, cacheable: bool },
    Refused(OcspErrorStatus),
}

type FlightResult = Result<Produced, Failure>;

type Flight = Shared<BoxFuture<'static, FlightResult>>;

/// Verdict on a cached response.
#[derive(Debug, PartialEq, Eq)]
enum Freshness {
    Serve,
    /// Valid, but old enough to be re-signed; served if re-signing fails.
    Refresh,
    /// Must not be served.
    Unusable,
    /// Served (or, if due, refreshed) only once the primary confirms that the row is still at
    /// the response's version.
    Verify(Unproven),
}

/// Why a cached response needs the primary's confirmation, which decides what happens when
/// Postgres cannot give it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Unproven {
    /// The change feed is not proven alive: nothing says a change was missed, so a valid
    /// response is served if Postgres cannot say (invariant 3).
    FeedDown,
    /// It may be older than a change this responder forgot, as its change log was full: a
    /// known unknown, so not served unless confirmed.
    BelowFloor,
}

/// Answers OCSP requests. Generic over the cache and the store so tests can swap them.
pub struct Responder<C, S> {
    issuers: LiveIssuers,
    /// The local tier's front, as large as it: keyed by the request as it arrived.
    raw: RawTier,
    local: LocalTier,
    cache: C,
    store: S,
    changes: Arc<ChangeLog>,
    limiter: SigningLimiter,
    /// Signings in progress; guarded together with `recent` so a request never misses both.
    flights: Mutex<HashMap<ResponseId, Flight>>,
    recent: LocalTier,
    hits: m::HitMetrics,
    policy: ResponsesConfig,
    key_prefix: String,
}

impl<C: ResponseCache, S: StatusStore> Responder<C, S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        issuers: IssuerSet,
        local: LocalTier,
        cache: C,
        store: S,
        changes: Arc<ChangeLog>,
        limiter: SigningLimiter,
        policy: ResponsesConfig,
        key_prefix: String,
    ) -> Self {
        Responder {
            issuers: LiveIssuers::new(issuers),
            raw: RawTier::new(local.capacity()),
            local,
            cache,
            store,
            changes,
            limiter,
            flights: Mutex::new(HashMap::new()),
            recent: LocalTier::with_ttl(RECENT_ENTRIES, RECENT_TTL),
            hits: m::HitMetrics::register(),
            policy,
            key_prefix,
        }
    }

    pub fn issuers(&self) -> &LiveIssuers {
        &self.issuers
    }

    pub fn cache(&self) -> &C {
        &self.cache
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// Answers a request seen before byte for byte from the raw tier, without decoding it:
    /// `None` unless the response it was answered with is still servable by the rules every
    /// cached response follows (`Responder::freshness`) and the issuer set it was matched in
    /// is still the one served. Then decode it and call [`Responder::answer`].
    pub fn answer_again(&self, raw: RawRequest<'_>) -> Option<Answer> {
        let answer = self.raw.lookup(raw, |entry| {
            if !entry.matched_in(&self.issuers.current()) {
                return None;
            }
            let heard = self.changes.heard(entry.id.issuer_id, &entry.id.serial);
            if self.freshness(&heard, &entry.response, Utc::now().timestamp()) != Freshness::Serve {
                return None;
            }
            Some(Answer::Response {
                response: entry.response.clone(),
                caching: Caching::Public,
                changed_at: heard.changed_at(),
            })
        })?;
        self.hits.raw_hit.increment(1);
        Some(answer)
    }

    /// Answers a decoded request. `raw` is the request as it arrived: if it is answered with a
    /// cacheable response, the raw tier keeps that for [`Responder::answer_again`].
    pub async fn answer(self: &Arc<Self>, mut request: OcspRequest, raw: Option<RawRequest<'_>>) -> Answer {
        let echo_nonce = self.policy.nonce == NoncePolicy::Echo && request.nonce.is_some();
        if request.certs.len() == 1 && !echo_nonce {
            // A nonce that is ignored still makes every request's bytes new: not worth a key.
            let raw = raw.filter(|_| request.nonce.is_none() && self.raw.is_enabled());
            if let Some(cert) = request.certs.pop() {
                return self.answer_one(cert, raw).await;
            }
        }
        self.answer_fresh(request).await
    }

    /// One CertID, no nonce: the cacheable case, which is nearly all traffic.
    async fn answer_one(self: &Arc<Self>, cert: RequestedCert, raw: Option<RawRequest<'_>>) -> Answer {
        let (issuer, matched_in) = {
            let issuers = self.issuers.current();
            let Some(issuer) = issuers.find(&cert).cloned() else {
                return Answer::Error(OcspErrorStatus::Unauthorized);
            };
            // Only a raw-tier entry keeps the set it was matched in.
            (issuer, raw.map(|_| Arc::clone(&issuers)))
        };
        let id = ResponseId { issuer_id: issuer.id, serial: cert.serial.clone(), variant: cert.variant };
        let remember = |response: &Arc<CachedResponse>| {
            if let (Some(raw), Some(issuers)) = (raw, &matched_in) {
                self.raw.insert(raw, RawEntry::new(id.clone(), response.clone(), issuers));
            }
        };
        let now = Utc::now().timestamp();
        let heard = self.changes.heard(id.issuer_id, &id.serial);
        let changed_at = heard.changed_at();

        if let Some(response) = self.local.get(&id) {
            if self.freshness(&heard, &response, now) == Freshness::Serve {
                self.hits.local_hit.increment(1);
                remember(&response);
                return Answer::Response { response, caching: Caching::Public, changed_at };
            }
            self.local.remove(&id);
        }

        let key = response_key(&self.key_prefix, issuer.id, &cert.serial, cert.variant);
        let mut still_valid = None;
        let started = Instant::now();
        let lookup = self.cache.get(&key).await;
        self.hits.redis_get_seconds.record(started.elapsed().as_secs_f64());
        match lookup {
            Ok(Some(value)) => match CachedResponse::from_bytes(value).map(Arc::new) {
                Some(response) => match self.freshness(&heard, &response, now) {
                    Freshness::Serve => {
                        self.hits.redis_hit.increment(1);
                        remember(&response);
                        self.local.insert(id.clone(), response.clone());
                        return Answer::Response { response, caching: Caching::Public, changed_at };
                    }
                    Freshness::Verify(why) if self.confirmed_by_primary(&id, &response, why).await => {
                        metrics::counter!(m::CACHE_LOOKUPS, "tier" => "redis", "result" => "verified").increment(1);
                        if !self.due_for_refresh(&response, now) {
                            return Answer::Response { response, caching: Caching::Public, changed_at };
                        }
                        // Confirmed, and due for re-signing: it is the fallback, as for Refresh.
                        still_valid = Some(response);
                    }
                    Freshness::Refresh => {
                        metrics::counter!(m::CACHE_LOOKUPS, "tier" => "redis", "result" => "stale").increment(1);
                        still_valid = Some(response);
                    }
                    Freshness::Verify(_) | Freshness::Unusable => {
                        metrics::counter!(m::CACHE_LOOKUPS, "tier" => "redis", "result" => "unusable").increment(1);
                    }
                },
                None => metrics::counter!(m::CACHE_LOOKUPS, "tier" => "redis", "result" => "corrupt").increment(1),
            },
            Ok(None) => self.hits.redis_miss.increment(1),
            Err(error) => {
                metrics::counter!(m::CACHE_LOOKUPS, "tier" => "redis", "result" => "error").increment(1);
                metrics::counter!(m::REDIS_ERRORS, "op" => "get").increment(1);
                tracing::warn!(%error, key, "redis GET failed; answering from postgres");
            }
        }

        let produced = self.single_flight(id.clone(), issuer.clone(), cert).await;
        // Read again: a change heard while this miss was in flight makes date validators suspect.
        let changed_at = self.changes.heard(id.issuer_id, &id.serial).changed_at();
        match produced {
            Ok(Produced::Response { response, cacheable }) => {
                let caching = if cacheable {
                    remember(&response);
                    Caching::Public
                } else {
                    Caching::NoCache
                };
                Answer::Response { response, caching, changed_at }
            }
            Ok(Produced::Refused(status)) => Answer::Error(status),
            Err(failure) => match still_valid {
                Some(response) if self.still_servable(&id, &response).await => {
                    Answer::Response { response, caching: Caching::Public, changed_at }
                }
                _ => Answer::Error(failure.status),
            },
        }
    }

    /// Whether a cached response kept as the fallback of a failed refresh may still go out.
    /// It was checked before the flight, which can take seconds (a full signing queue, a slow
    /// read); a change heard meanwhile, or the feed lost, must not let the old status out.
    async fn still_servable(&self, id: &ResponseId, response: &CachedResponse) -> bool {
        let heard = self.changes.heard(id.issuer_id, &id.serial);
        match self.freshness(&heard, response, Utc::now().timestamp()) {
            Freshness::Serve | Freshness::Refresh => true,
            Freshness::Verify(why) => self.confirmed_by_primary(id, response, why).await,
            Freshness::Unusable => false,
        }
    }

    /// Whether a cached response may be served at `now` (seconds since the epoch), given what
    /// was heard of its certificate.
    fn freshness(&self, heard: &Heard, response: &CachedResponse, now: i64) -> Freshness {
        if now >= response.facts.next_update
            || now > response.facts.not_after.saturating_add(self.policy.expired_grace.as_secs() as i64)
        {
            return Freshness::Unusable;
        }
        match heard.cached(response.facts.status_version) {
            Verdict::Refused => return Freshness::Unusable,
            Verdict::Confirm => return Freshness::Verify(Unproven::BelowFloor),
            Verdict::Allowed => {}
        }
        if !self.changes.feed.is_live() {
            return Freshness::Verify(Unproven::FeedDown);
        }
        if self.due_for_refresh(response, now) {
            return Freshness::Refresh;
        }
        Freshness::Serve
    }

    fn due_for_refresh(&self, response: &CachedResponse, now: i64) -> bool {
        now >= response.facts.this_update.saturating_add(self.policy.refresh_after.as_secs() as i64)
    }

    /// Does the primary say this response is signed from the row's current version? If
    /// Postgres cannot say, a response unproven only because the feed is down is served: it
    /// is valid, and invariant 3 prefers a valid cached response to an error when the database
    /// is down; one that may be older than a forgotten change is not.
    async fn confirmed_by_primary(&self, id: &ResponseId, response: &CachedResponse, why: Unproven) -> bool {
        let label = match why {
            Unproven::FeedDown => "feed_down",
            Unproven::BelowFloor => "confirm",
        };
        match self.read_from(&[(id.issuer_id, id.serial.clone())], ReadFrom::Primary, label).await {
            Ok(records) => {
                records.first().and_then(Option::as_ref).is_some_and(|r| r.version == response.facts.status_version)
            }
            Err(_) => why == Unproven::FeedDown,
        }
    }

    /// Answers from a flight that just landed, joins the one in progress for `id`, or starts it.
    async fn single_flight(self: &Arc<Self>, id: ResponseId, issuer: Arc<Issuer>, cert: RequestedCert) -> FlightResult {
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            let now = Utc::now().timestamp();
            let heard = self.changes.heard(id.issuer_id, &id.serial);
            let recent =
                self.recent.get(&id).filter(|response| self.freshness(&heard, response, now) == Freshness::Serve);
            if let Some(response) = recent {
                metrics::counter!(m::CACHE_LOOKUPS, "tier" => "recent", "result" => "hit").increment(1);
                return Ok(Produced::Response { response, cacheable: true });
            }
            match flights.get(&id) {
                Some(flight) => {
                    metrics::counter!(m::SINGLE_FLIGHT_JOINS).increment(1);
                    flight.clone()
                }
                None => {
                    let this = self.clone();
                    let key = id.clone();
                    let (landed, result) = tokio::sync::oneshot::channel();
                    // Spawned, so the flight completes (and lands in Redis) even if the request
                    // that started it goes away. The guard removes the flight however the task
                    // ends, a panic included, so the next request starts a new one.
                    let task = tokio::spawn(async move {
                        let flight = FlightGuard { responder: &this, id: &key };
                        let result = this.produce(&issuer, &cert, &key).await;
                        this.land(&key, &result);
                        drop(flight);
                        let stored = match &result {
                            Ok(Produced::Response { response, cacheable: true }) => Some(response.clone()),
                            _ => None,
                        };
                        // The answer does not wait for Redis (one round trip, more under load):
                        // until the SET lands, `recent` answers the misses it would have.
                        let _ = landed.send(result);
                        if let Some(response) = stored {
                            this.store_response(&key, &response).await;
                        }
                    });
                    let flight = async move {
                        match result.await {
                            Ok(result) => result,
                            // The task ended without a result: it panicked.
                            Err(_) => Err(Failure::internal_error(match task.await {
                                Err(e) => format!("signing task failed: {e}"),
                                Ok(()) => "signing task ended without a result".to_owned(),
                            })),
                        }
                    }
                    .boxed()
                    .shared();
                    flights.insert(id, flight.clone());
                    flight
                }
            }
        };
        flight.await
    }

    /// Makes a landed flight's response available to latecomers; the flight itself is removed
    /// by its [`FlightGuard`] right after.
    fn land(&self, id: &ResponseId, result: &FlightResult) {
        if let Ok(Produced::Response { response, cacheable: true }) = result {
            let _flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            self.recent.insert(id.clone(), response.clone());
        }
    }

    /// Reads the status and signs a response for one certificate: the body of a flight.
    async fn produce(&self, issuer: &Issuer, cert: &RequestedCert, id: &ResponseId) -> FlightResult {
        // A status change heard while signing means the read may predate it: read again.
        for _ in 0..SIGNING_ATTEMPTS {
            let began = ReadStart::now();
            let record = self.read_status(issuer.id, &cert.serial).await?;
            let now = Utc::now();
            let status = match self.status_answer(record.as_ref(), now) {
                Ok(status) => status,
                Err(refusal) => return Ok(Produced::Refused(refusal)),
            };
            let (this_update, next_update) = self.validity_window(now, &status);
            let answer = SingleAnswer { cert_id: &cert.cert_id, status, this_update, next_update };
            let der = self.sign(issuer, &[answer], None, now).await?;
            let status_version = record.as_ref().map_or(0, |r| r.version);
            if !self.changes.heard(issuer.id, &cert.serial).read_is_current(status_version, began) {
                continue;
            }
            let not_after = record.as_ref().map_or(i64::MAX, |r| r.not_after.timestamp());
            let facts = Facts {
                revoked: matches!(status, CertStatusAnswer::Revoked { .. }),
                status_version,
                this_update: this_update.timestamp(),
                next_update: next_update.timestamp(),
                not_after,
            };
            let tag = purge_tag(&issuer.name, &cert.serial);
            let Some(response) = CachedResponse::new(&der, facts, &tag).map(Arc::new) else {
                return Err(Failure::internal_error(format!("cannot lay out the headers of a response tagged {tag}")));
            };
            let cacheable = record.is_some();
            if cacheable {
                self.local.insert(id.clone(), response.clone());
            }
            return Ok(Produced::Response { response, cacheable });
        }
        Err(Failure::try_later("status kept changing while signing"))
    }

    async fn read_status(&self, issuer_id: i32, serial: &Serial) -> Result<Option<CertRecord>, Failure> {
        let mut records = self.read_statuses(&[(issuer_id, serial.clone())]).await?;
        Ok(records.pop().flatten())
    }

    /// Reads the status of `keys` as current as every change this responder has heard of:
    /// from the replica when it can be shown to be current enough, else from the primary.
    async fn read_statuses(&self, keys: &[(i32, Serial)]) -> Result<Vec<Option<CertRecord>>, Failure> {
        let feed = &self.changes.feed;
        if !feed.is_live() {
            return self.read_from(keys, ReadFrom::Primary, "feed_down").await;
        }
        let records = match self.read_from_replica(keys).await? {
            Some(records) => records,
            None => return self.read_from(keys, ReadFrom::Primary, "replica_lagging").await,
        };
        // A row older than a change heard of: the replica has not replayed that change yet. Or
        // older than a forgotten one: nothing says when the replica's read began.
        let behind = keys.iter().zip(&records).any(|((issuer_id, serial), record)| {
            let version = record.as_ref().map_or(0, |r| r.version);
            !self.changes.heard(*issuer_id, serial).read_is_current(version, ReadStart::UNKNOWN)
        });
        if behind {
            return self.read_from(keys, ReadFrom::Primary, "replica_behind_change").await;
        }
        Ok(records)
    }

    /// A replica read, or `None` if the replica is a standby that cannot be shown to lag less
    /// than [`crate::feed::log::MAX_REPLICA_LAG`].
    async fn read_from_replica(&self, keys: &[(i32, Serial)]) -> Result<Option<Vec<Option<CertRecord>>>, Failure> {
        let read = self.lookup(keys, ReadFrom::Replica).await?;
        // Without a replica configured, the primary answers "replica" reads: count it as such.
        let server = match read.replayed {
            Some(replayed) if !self.changes.feed.replica_is_recent(replayed) => return Ok(None),
            Some(_) => "replica",
            None => "primary",
        };
        metrics::counter!(m::STATUS_READS, "server" => server, "why" => "routine").increment(1);
        Ok(Some(read.records))
    }

    async fn read_from(
        &self,
        keys: &[(i32, Serial)],
        from: ReadFrom,
        why: &'static str,
    ) -> Result<Vec<Option<CertRecord>>, Failure> {
        let server = match from {
            ReadFrom::Replica => "replica",
            ReadFrom::Primary => "primary",
        };
        metrics::counter!(m::STATUS_READS, "server" => server, "why" => why).increment(1);
        Ok(self.lookup(keys, from).await?.records)
    }

    /// Every status read goes through here, so each is timed, counted and, if it fails,
    /// logged the same way.
    async fn lookup(&self, keys: &[(i32, Serial)], from: ReadFrom) -> Result<crate::store::StatusRead, Failure> {
        let started = Instant::now();
        let result = self.store.lookup(keys, from).await;
        metrics::histogram!(m::DB_READ_SECONDS).record(started.elapsed().as_secs_f64());
        match result {
            Ok(read) => {
                metrics::counter!(m::DB_READS).increment(keys.len() as u64);
                Ok(read)
            }
            Err(error) => {
                metrics::counter!(m::DB_ERRORS, "op" => "lookup").increment(1);
                let first = keys.first().map(|(issuer_id, serial)| format!("{issuer_id}:{serial}"));
                tracing::warn!(%error, first = first.as_deref(), certificates = keys.len(), "status read failed");
                Err(Failure::try_later(error))
            }
        }
    }

    /// The certStatus to sign, or the refusal to send instead (no signature is made).
    fn status_answer(
        &self,
        record: Option<&CertRecord>,
        now: DateTime<Utc>,
    ) -> Result<CertStatusAnswer, OcspErrorStatus> {
        let Some(record) = record else {
            return match self.policy.unissued {
                UnissuedPolicy::Unauthorized => Err(OcspErrorStatus::Unauthorized),
                UnissuedPolicy::Unknown => Ok(CertStatusAnswer::Unknown),
                UnissuedPolicy::Revoked => Ok(CertStatusAnswer::Unissued),
            };
        };
        let grace = TimeDelta::from_std(self.policy.expired_grace).unwrap_or(TimeDelta::zero());
        if record.not_after.checked_add_signed(grace).is_some_and(|last_day| now > last_day) {
            return Err(OcspErrorStatus::Unauthorized);
        }
        Ok(match record.revocation {
            // A revocation time ahead of this responder's clock (clock skew with Postgres) is
            // reported as now: revocationTime <= thisUpdate <= producedAt must hold.
            Some(revocation) => CertStatusAnswer::Revoked { at: revocation.at.min(now), reason: revocation.reason },
            None => CertStatusAnswer::Good,
        })
    }

    /// thisUpdate and nextUpdate for a response produced at `now`: thisUpdate is truncated to
    /// the minute, but never before the revocation time it reports.
    fn validity_window(&self, now: DateTime<Utc>, status: &CertStatusAnswer) -> (DateTime<Utc>, DateTime<Utc>) {
        let mut this_update = now.duration_trunc(TimeDelta::minutes(1)).unwrap_or(now);
        if let CertStatusAnswer::Revoked { at, .. } = status {
            this_update = this_update.max(*at);
        }
        let validity = TimeDelta::from_std(self.policy.validity).unwrap_or(TimeDelta::hours(96));
        (this_update, this_update + validity)
    }

    /// Encodes, signs (within the signing limits) and assembles one response.
    async fn sign(
        &self,
        issuer: &Issuer,
        answers: &[SingleAnswer<'_>],
        nonce: Option<&[u8]>,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, Failure> {
        let _permit = self.limiter.acquire().await.map_err(|overloaded| {
            metrics::counter!(m::SIGNER_OVERLOADED).increment(1);
            Failure::try_later(overloaded)
        })?;
        let tbs = encode_response_data(issuer.responder_key_hash(), now, answers, nonce).map_err(|error| {
            tracing::error!(%error, issuer = %issuer.name, "cannot encode the response: nothing signed");
            Failure::internal_error(error)
        })?;
        let started = Instant::now();
        let signature = issuer.signer().sign(&tbs).await.map_err(|error| {
            let signer = issuer.signer().describe().to_owned();
            metrics::counter!(m::SIGNATURE_ERRORS, "issuer" => issuer.name.clone(), "signer" => signer.clone())
                .increment(1);
            tracing::error!(%error, issuer = %issuer.name, signer, "signing failed");
            Failure::try_later(error)
        })?;
        let recorded = issuer.signing_metrics();
        recorded.seconds.record(started.elapsed().as_secs_f64());
        recorded.signatures.increment(1);
        let certs: Vec<&[u8]> = issuer.included_certs().iter().map(Bytes::as_ref).collect();
        Ok(assemble(&tbs, issuer.signer().algorithm_der(), &signature, &certs))
    }

    /// Writes a fresh response to Redis, until its nextUpdate. A Redis failure costs a future
    /// signature, never an answer.
    async fn store_response(&self, id: &ResponseId, response: &CachedResponse) {
        let now = Utc::now().timestamp();
        let ttl = Duration::from_secs(response.facts.next_update.saturating_sub(now).max(1) as u64);
        let key = response_key(&self.key_prefix, id.issuer_id, &id.serial, id.variant);
        let started = Instant::now();
        if let Err(error) = self.cache.set(&key, response.to_bytes(), ttl).await {
            metrics::counter!(m::REDIS_ERRORS, "op" => "set").increment(1);
            tracing::warn!(%error, key, "redis SET failed");
        }
        metrics::histogram!(m::REDIS_SECONDS, "op" => "set").record(started.elapsed().as_secs_f64());
    }

    /// Periodic upkeep of the change log: forgets changes older than any response that could
    /// predate them, and merges its runs.
    pub fn sweep(&self) {
        let horizon = self.change_horizon().as_secs() as i64;
        self.changes.upkeep(Utc::now().timestamp().saturating_sub(horizon));
    }

    /// How long a change is remembered after it was heard of: as long as a response read
    /// before it can be valid, and a replica read predate it.
    pub fn change_horizon(&self) -> Duration {
        self.policy.validity + crate::feed::log::MAX_REPLICA_LAG
    }

    /// Signing capacity in use, for metrics and readiness.
    pub fn signing_in_flight(&self) -> usize {
        self.limiter.in_flight()
    }

    /// Requests waiting for signing capacity, for metrics.
    pub fn signing_waiting(&self) -> usize {
        self.limiter.waiting()
    }

    /// Keys in the raw tier, and certificates they belong to, for metrics.
    pub fn raw_tier_size(&self) -> (usize, usize) {
        self.raw.size()
    }
}

/// Removes a flight from the table when its task ends, however it ends.
struct FlightGuard<'a, C: ResponseCache, S: StatusStore> {
    responder: &'a Responder<C, S>,
    id: &'a ResponseId,
}

impl<C: ResponseCache, S: StatusStore> Drop for FlightGuard<'_, C, S> {
    fn drop(&mut self) {
        self.responder.flights.lock().unwrap_or_else(|p| p.into_inner()).remove(self.id);
    }
}

impl<C: ResponseCache, S: StatusStore> Subscriber for Responder<C, S> {
    fn changes(&self) -> &ChangeLog {
        &self.changes
    }

    fn issuers_changed(&self) {
        self.issuers.mark_stale();
    }

    fn forget(&self, issuer_id: i32, serial: &Serial) {
        self.raw.remove_certificate(issuer_id, serial);
        self.local.remove_certificate(issuer_id, serial);
        self.recent.remove_certificate(issuer_id, serial);
    }
}

mod fresh;
#[cfg(test)]
mod tests;

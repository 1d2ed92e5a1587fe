//! `jitocsp serve`: builds the pipeline from the configuration and runs the two listeners.
//!
//! - the OCSP listener ([`crate::http`]), which carries nothing but OCSP;
//! - the metrics listener: `/metrics` (Prometheus text), `/healthz` (the process is up) and
//!   `/readyz` (Postgres, Redis and every issuer's signer are usable);
//! - background tasks: the status-change listener, the pending-purge retrier, the CDN purge
//!   retrier (with `[cdn]` hooks configured) and upkeep.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::cache::local::LocalTier;
use crate::cache::redis::RedisCache;
use crate::cache::CacheError;
use crate::config::Config;
use crate::feed::listener;
use crate::feed::listener::Subscriber;
use crate::feed::log::ChangeLog;
use crate::http::{self, OcspService};
use crate::issuers::{IssuerLoadError, IssuerSet};
use crate::metrics as m;
use crate::pipeline::Responder;
use crate::purge::{cdn, pending};
use crate::signer::limiter::SigningLimiter;
use crate::store::batch::Batching;
use crate::store::per_runtime::{PerRuntimeStore, Shares};
use crate::store::postgres::{PgStore, PgTargets, PoolSizes};
use crate::store::{StatusStore, StoreError};

/// The responder as `serve` runs it: Redis and Postgres.
pub type LiveResponder = Responder<RedisCache, PerRuntimeStore<Batching<PgStore>>>;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Each store and cache error names its backend ("postgres: ...", "redis: ...").
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("loading issuers from postgres: {0}")]
    Issuers(#[from] IssuerLoadError),
    #[error("connecting to postgres at start-up: {0}")]
    Connect(#[from] crate::db::ConnectError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: String, source: std::io::Error },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Installs the Prometheus recorder, with histogram buckets rather than summaries.
pub fn install_metrics() -> Result<PrometheusHandle, ServeError> {
    let err = |e: metrics_exporter_prometheus::BuildError| ServeError::Metrics(e.to_string());
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), m::LATENCY_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full(m::RESPONSE_AGE_SECONDS.into()), m::AGE_BUCKETS)
        .map_err(err)?
        .set_buckets_for_metric(Matcher::Full(m::DB_BATCH_SIZE.into()), m::BATCH_BUCKETS)
        .map_err(err)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| ServeError::Metrics(e.to_string()))?;
    metrics::gauge!(m::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::counter!(m::SLOW_BODIES).absolute(0);
    metrics::gauge!(m::HTTP_CONNECTIONS).set(0.0);
    Ok(handle)
}

/// Builds the pipeline from `config`: connects the pools and loads the issuers.
pub async fn build_responder(config: &Config) -> Result<Arc<LiveResponder>, ServeError> {
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let targets = PgTargets::new(&config.database.url, Some(config.database.read_url()), &config.database.tls_files())?;
    let shares = Shares::of(config.database.pool_size, config.database.read_concurrency, workers(config));
    let store = PerRuntimeStore::new(move || {
        Ok(Batching::new(PgStore::new(targets.clone(), shares.pools, timeout)?, shares.read_concurrency))
    });
    let client = crate::db::connect(&config.database.url, &config.database.tls_files()).await?;
    let issuers = IssuerSet::load(&client, &(&config.signing).into()).await?;
    drop(client);
    if issuers.is_empty() {
        tracing::warn!(
            "no issuers configured: every request will be answered unauthorized (see `jitocsp admin issuer add`)"
        );
    }
    for issuer in issuers.iter() {
        tracing::info!(issuer = %issuer.name, id = issuer.id, signer = issuer.signer().describe(), "serving issuer");
    }
    let cache = RedisCache::connect(
        config.redis.mode,
        &config.redis.url,
        &config.redis.nodes,
        &config.redis.tls_files(),
        Duration::from_millis(config.redis.timeout_ms),
    )
    .await?;
    Ok(Arc::new(Responder::new(
        issuers,
        LocalTier::new(config.cache.local_entries),
        cache,
        store,
        Arc::new(ChangeLog::new(config.responses.max_remembered_changes)),
        SigningLimiter::new(config.signing.max_in_flight, config.signing.max_waiting),
        config.responses.clone(),
        config.cache.key_prefix.clone(),
    )))
}

/// Runs the responder until SIGINT or SIGTERM.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let metrics_handle = install_metrics()?;
    let responder = build_responder(&config).await?;
    // Purge bookkeeping writes, so it goes to the primary even when reads use a replica.
    let timeout = Duration::from_millis(config.database.connect_timeout_ms);
    let targets = PgTargets::new(&config.database.url, None, &config.database.tls_files())?;
    let primary = PgStore::new(targets, PoolSizes::of(2), timeout)?.primary().clone();

    // The listener needs the primary: replicas do not deliver notifications.
    tokio::spawn(listener::run(
        config.database.url.clone(),
        config.database.tls_files(),
        responder.clone(),
        config.responses.validity,
    ));
    {
        let (responder, url, tls, options) =
            (responder.clone(), config.database.url.clone(), config.database.tls_files(), (&config.signing).into());
        tokio::spawn(async move { responder.issuers().keep_current(&url, &tls, &options).await });
    }
    tokio::spawn(pending::run(primary.clone(), responder.cache().clone(), config.cache.key_prefix.clone()));
    if config.cdn.enabled() {
        tracing::info!(base_url = %config.cdn.base_url, "CDN purge hook configured; retrying owed purges");
        tokio::spawn(cdn::run(primary, config.cdn.clone()));
    }
    metrics::gauge!(m::SIGNER_MAX_IN_FLIGHT).set(config.signing.max_in_flight as f64);
    metrics::gauge!(m::SIGNER_MAX_WAITING).set(config.signing.max_waiting as f64);
    metrics::gauge!(m::CHANGES_REMEMBERED_MAX).set(config.responses.max_remembered_changes as f64);
    let upkeep = {
        let responder = responder.clone();
        let handle = metrics_handle.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_secs(1));
            loop {
                interval.tick().await;
                // Merging the change log's runs after a mass revocation is CPU work: off the
                // runtime's threads.
                let sweeper = responder.clone();
                let _ = tokio::task::spawn_blocking(move || sweeper.sweep()).await;
                handle.run_upkeep();
            }
        })
    };

    let service = Arc::new(OcspService {
        metrics: m::RequestMetrics::register(),
        responder: responder.clone(),
        path_prefix: config.server.path_prefix.clone(),
        cache_policy: http::headers::CachePolicy {
            max_age_cap: config.responses.max_age_cap,
            refresh_after: config.responses.refresh_after,
        },
        request_sample: config.log.request_sample,
        body_timeout: config.server.body_timeout,
    });
    let workers = workers(&config);
    // actix counts connections per worker; `server.max_connections` is per instance.
    let ocsp_server = HttpServer::new(move || App::new().configure(http::configure(service.clone())))
        .workers(workers)
        .max_connections(config.server.max_connections.div_ceil(workers))
        .client_request_timeout(config.server.header_timeout)
        .on_connect(|_, extensions| {
            extensions.insert(m::OpenConnection::opened());
        })
        .bind(&config.server.listen)
        .map_err(|source| ServeError::Bind { addr: config.server.listen.clone(), source })?
        .run();

    let probe_state = web::Data::new(Probes { responder: responder.clone(), metrics: metrics_handle });
    let metrics_server = HttpServer::new(move || {
        App::new()
            .app_data(probe_state.clone())
            .route("/metrics", web::get().to(render_metrics))
            .route("/healthz", web::get().to(|| async { HttpResponse::Ok().body("ok\n") }))
            .route("/readyz", web::get().to(readiness))
    })
    .workers(1)
    .bind(&config.server.metrics_listen)
    .map_err(|source| ServeError::Bind { addr: config.server.metrics_listen.clone(), source })?
    .run();
    let metrics_stop = metrics_server.handle();
    let metrics_task = tokio::spawn(metrics_server);

    tracing::info!(listen = %config.server.listen, metrics = %config.server.metrics_listen, "jitocsp serving");
    let result = ocsp_server.await;
    metrics_stop.stop(true).await;
    let _ = metrics_task.await;
    upkeep.abort();
    tracing::info!("jitocsp stopped");
    Ok(result?)
}

struct Probes {
    responder: Arc<LiveResponder>,
    metrics: PrometheusHandle,
}

async fn render_metrics(probes: web::Data<Probes>) -> HttpResponse {
    // Gauges of instantaneous state are sampled now, so a scrape sees the current values.
    metrics::gauge!(m::SIGNER_IN_FLIGHT).set(probes.responder.signing_in_flight() as f64);
    metrics::gauge!(m::SIGNER_WAITING).set(probes.responder.signing_waiting() as f64);
    let changes = probes.responder.changes().summary();
    metrics::gauge!(m::CHANGES_REMEMBERED).set(changes.remembered as f64);
    metrics::gauge!(m::CHANGE_FLOOR_ACTIVE).set(if changes.floor.is_some() { 1.0 } else { 0.0 });
    let (keys, certificates) = probes.responder.raw_tier_size();
    metrics::gauge!(m::LOCAL_REQUEST_KEYS).set(keys as f64);
    metrics::gauge!(m::LOCAL_REQUEST_CERTIFICATES).set(certificates as f64);
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(probes.metrics.render())
}

/// 200 when every dependency answers, 503 naming those that do not. Either way, a line for
/// what degrades performance without making answers wrong.
async fn readiness(probes: web::Data<Probes>) -> HttpResponse {
    let responder = &probes.responder;
    let mut problems = Vec::new();
    // Each error names its backend ("postgres: ...", "redis: ...").
    if let Err(e) = responder.store().ping().await {
        problems.push(e.to_string());
    }
    if let Err(e) = responder.cache().ping().await {
        problems.push(e.to_string());
    }
    let issuers = responder.issuers().snapshot();
    for issuer in issuers.iter() {
        if let Err(e) = issuer.signer().check() {
            problems.push(format!("issuer {}: {e}", issuer.name));
        }
    }
    // Unproven for a moment, the feed costs primary confirmations; lost, a reconnection.
    let feed = &responder.changes().feed;
    if feed.is_lost() {
        let age = feed.proof_age().map_or("never".to_owned(), |age| format!("{:.1} s ago", age.as_secs_f64()));
        problems.push(format!(
            "status-change feed: not proven alive (last heartbeat back: {age}); reconnecting, and cached \
             responses are served only after the primary confirms them"
        ));
    }
    let notes: String = change_log_note(responder).map(|note| note + "\n").unwrap_or_default();
    if problems.is_empty() {
        HttpResponse::Ok().body(format!("ready: {} issuer(s)\n{notes}", issuers.len()))
    } else {
        HttpResponse::ServiceUnavailable().body(problems.join("\n") + "\n" + &notes)
    }
}

/// `server.workers`, 0 meaning one per core.
fn workers(config: &Config) -> usize {
    match config.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}

/// While the change log is past its limit: what it forgot, what that costs, and until when.
fn change_log_note(responder: &LiveResponder) -> Option<String> {
    let summary = responder.changes().summary();
    let floor = summary.floor?;
    let time = |t: i64| chrono::DateTime::from_timestamp(t, 0).map_or(t.to_string(), |t| t.to_rfc3339());
    let until = floor.heard_at.saturating_add(responder.change_horizon().as_secs() as i64);
    Some(format!(
        "status-change log full ({} changes remembered, responses.max_remembered_changes = {}): changes heard up to \
         {} were forgotten, so cached responses signed before status version {} are served only after the primary \
         confirms them (a Postgres read per hit), until {}",
        summary.remembered,
        summary.limit,
        time(floor.heard_at),
        floor.version,
        time(until)
    ))
}

//! The OCSP listener: GET, HEAD and POST (RFC 6960 appendix A), nothing else.
//!
//! One handler serves every path, because the request is in the path: routing would decode
//! and normalise it (see [`get`]). Everything this listener sends is an OCSP response, error
//! statuses included, because TLS servers that staple reject anything else.

pub mod get;
pub mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::StreamExt;

use crate::cache::raw::RawRequest;
use crate::cache::ResponseCache;
use crate::metrics::{self as m, RequestMetrics};
use crate::ocsp::{request, OcspErrorStatus, ResponseStatus};
use crate::pipeline::{Answer, Responder};
use crate::store::StatusStore;

/// Largest POST body accepted (a request for 16 CertIDs is well under 2 KiB).
pub const MAX_POST_BODY: usize = 10 * 1024;

/// What the handler needs, shared by every worker.
pub struct OcspService<C, S> {
    pub responder: Arc<Responder<C, S>>,
    pub path_prefix: String,
    pub cache_policy: headers::CachePolicy,
    pub metrics: RequestMetrics,
    /// Fraction of requests logged (`log.request_sample`); tryLater and internalError answers
    /// are always logged.
    pub request_sample: f64,
    /// Time a POST body has to arrive (`server.body_timeout`).
    pub body_timeout: Duration,
}

/// Registers the OCSP handler as the only service of an actix `App`.
pub fn configure<C: ResponseCache, S: StatusStore>(
    service: Arc<OcspService<C, S>>,
) -> impl FnOnce(&mut web::ServiceConfig) {
    move |cfg| {
        cfg.app_data(web::Data::from(service)).default_service(web::to(handle::<C, S>));
    }
}

async fn handle<C: ResponseCache, S: StatusStore>(
    request: HttpRequest,
    body: web::Payload,
    service: web::Data<OcspService<C, S>>,
) -> HttpResponse {
    let started = Instant::now();
    let method = request.method().clone();
    let method_index = match method {
        Method::GET => 0,
        Method::HEAD => 1,
        Method::POST => 2,
        _ => 3,
    };
    let responder = &service.responder;
    // A request seen before byte for byte is answered before any decoding (the raw tier).
    let answer = match method {
        Method::GET | Method::HEAD => {
            let path = request.uri().path();
            let raw = RawRequest::Get(path.as_bytes());
            match responder.answer_again(raw) {
                Some(answer) => answer,
                None => match get::decode_path(path, &service.path_prefix) {
                    Ok(der) => answer_der(responder, &der, raw).await,
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable GET");
                        return refuse(&service, method_index, &method, StatusCode::OK, started);
                    }
                },
            }
        }
        Method::POST => match read_body(&request, body, service.body_timeout).await {
            Ok(der) => match responder.answer_again(RawRequest::Post(&der)) {
                Some(answer) => answer,
                None => answer_der(responder, &der, RawRequest::Post(&der)).await,
            },
            Err(http_status) => return refuse(&service, method_index, &method, http_status, started),
        },
        _ => {
            return HttpResponse::MethodNotAllowed().insert_header((header::ALLOW, "GET, HEAD, POST")).finish();
        }
    };
    let now = chrono::Utc::now().timestamp();
    let outcome = match &answer {
        Answer::Error(status) => ResponseStatus::from(*status),
        Answer::Response { response, .. } => {
            service.metrics.response_age(now.saturating_sub(response.facts.this_update) as f64);
            ResponseStatus::Successful
        }
    };
    service.metrics.request(method_index, outcome, started.elapsed().as_secs_f64());
    let tag = match &answer {
        Answer::Response { response, .. } => Some(&response.headers.purge_tag),
        Answer::Error(_) => None,
    };
    log_request(service.request_sample, &method, outcome, tag, started);
    headers::respond(&answer, &request, now, service.cache_policy)
}

/// Decodes a request and has it answered; `raw` is how it arrived.
async fn answer_der<C: ResponseCache, S: StatusStore>(
    responder: &Arc<Responder<C, S>>,
    der: &[u8],
    raw: RawRequest<'_>,
) -> Answer {
    match request::parse(der) {
        Ok(parsed) => responder.answer(parsed, Some(raw)).await,
        Err(e) => {
            tracing::debug!(error = %e, "malformed request");
            Answer::Error(OcspErrorStatus::MalformedRequest)
        }
    }
}

/// A request whose OCSP request could not even be taken from the HTTP one: malformedRequest,
/// with `http_status`.
fn refuse<C, S>(
    service: &OcspService<C, S>,
    method_index: usize,
    method: &Method,
    http_status: StatusCode,
    started: Instant,
) -> HttpResponse {
    service.metrics.request(method_index, ResponseStatus::MalformedRequest, started.elapsed().as_secs_f64());
    log_request(service.request_sample, method, ResponseStatus::MalformedRequest, None, started);
    headers::error(http_status, OcspErrorStatus::MalformedRequest)
}

/// Reads a POST body of at most [`MAX_POST_BODY`] bytes; larger ones get 413, and one that
/// has not fully arrived within `timeout` gets 408 (actix bounds only the request head: a
/// body trickled a byte at a time would otherwise hold its connection for as long as the
/// client likes). The connection of an unfinished body is closed after the answer.
async fn read_body(request: &HttpRequest, body: web::Payload, timeout: Duration) -> Result<Vec<u8>, StatusCode> {
    match tokio::time::timeout(timeout, read_body_unbounded(request, body)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!(m::SLOW_BODIES).increment(1);
            Err(StatusCode::REQUEST_TIMEOUT)
        }
    }
}

async fn read_body_unbounded(request: &HttpRequest, mut body: web::Payload) -> Result<Vec<u8>, StatusCode> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_POST_BODY) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let mut buffer = Vec::with_capacity(declared.unwrap_or(512).min(MAX_POST_BODY));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        if buffer.len() + chunk.len() > MAX_POST_BODY {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer)
}

/// One log line per request: always for answers that mean the service is failing (tryLater,
/// internalError), at `warn`; for the others, a `sample` fraction of them, at `info`. Errors
/// are never sampled away (Boulder #7102: a 1-in-1000 sample hid rare Redis errors).
fn log_request(sample: f64, method: &Method, outcome: ResponseStatus, cert: Option<&HeaderValue>, started: Instant) {
    let failing = matches!(outcome, ResponseStatus::TryLater | ResponseStatus::InternalError);
    if !failing && !sampled(sample) {
        return;
    }
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    let cert = cert.and_then(|tag| tag.to_str().ok()).unwrap_or("-");
    if failing {
        tracing::warn!(target: "jitocsp::request", method = %method, outcome = outcome.as_str(), cert, elapsed_ms,
            "request failed");
    } else {
        tracing::info!(target: "jitocsp::request", method = %method, outcome = outcome.as_str(), cert, elapsed_ms,
            "request");
    }
}

/// True with probability `sample` (a per-thread xorshift generator; not for secrets).
fn sampled(sample: f64) -> bool {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u64(0x006a_6974_6f63_7370);
            h.finish() | 1
        });
    }
    if sample <= 0.0 {
        return false;
    }
    if sample >= 1.0 {
        return true;
    }
    let x = STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        x
    });
    ((x >> 11) as f64 / (1u64 << 53) as f64) < sample
}

#[cfg(test)]
mod tests {
    use super::sampled;

    #[test]
    fn sampling_rate_is_about_right() {
        assert!(!(0..1000).any(|_| sampled(0.0)));
        assert!((0..1000).all(|_| sampled(1.0)));
        let hits = (0..100_000).filter(|_| sampled(0.1)).count();
        assert!((8_000..12_000).contains(&hits), "{hits}");
    }
}

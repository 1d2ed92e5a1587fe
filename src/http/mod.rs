//! The OCSP listener: GET, HEAD and POST (RFC 6960 appendix A), nothing else.
//!
//! One handler serves every path, because the request is in the path: routing would decode
//! and normalise it (see [`get`]). Everything this listener sends is an OCSP response, error
//! statuses included, because TLS servers that staple reject anything else.

pub mod get;
pub mod headers;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;

use crate::cache::ResponseCache;
use crate::metrics as m;
use crate::ocsp::{request, ResponseStatus};
use crate::pipeline::{Answer, Responder};
use crate::store::StatusStore;

/// Largest POST body accepted (a request for 16 CertIDs is well under 2 KiB).
pub const MAX_POST_BODY: usize = 10 * 1024;

/// What the handler needs, shared by every worker.
pub struct OcspService<C, S> {
    pub responder: Arc<Responder<C, S>>,
    pub path_prefix: String,
    pub max_age_cap: Option<Duration>,
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
    let der = match method {
        Method::GET | Method::HEAD => get::decode_path(request.uri().path(), &service.path_prefix).map_err(|e| {
            tracing::debug!(error = %e, "undecodable GET");
            StatusCode::OK
        }),
        Method::POST => read_body(&request, body).await,
        _ => {
            return HttpResponse::MethodNotAllowed().insert_header((header::ALLOW, "GET, HEAD, POST")).finish();
        }
    };
    let answer = match der {
        Ok(der) => match request::parse(&der) {
            Ok(parsed) => service.responder.answer(parsed).await,
            Err(e) => {
                tracing::debug!(error = %e, "malformed request");
                Answer::Error(ResponseStatus::MalformedRequest)
            }
        },
        Err(http_status) => {
            record(&method, ResponseStatus::MalformedRequest, started);
            return headers::error(http_status, ResponseStatus::MalformedRequest);
        }
    };
    let now = chrono::Utc::now().timestamp();
    let outcome = match &answer {
        Answer::Error(status) => *status,
        Answer::Response { response, .. } => {
            metrics::histogram!(m::RESPONSE_AGE_SECONDS).record(now.saturating_sub(response.this_update) as f64);
            ResponseStatus::Successful
        }
    };
    record(&method, outcome, started);
    headers::respond(&answer, &request, now, service.max_age_cap)
}

/// Reads a POST body of at most [`MAX_POST_BODY`] bytes; larger ones get 413.
async fn read_body(request: &HttpRequest, mut body: web::Payload) -> Result<Vec<u8>, StatusCode> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > MAX_POST_BODY) {
        return Err(StatusCode::PAYLOAD_TOO_LARGE);
    }
    let mut buffer = BytesMut::with_capacity(declared.unwrap_or(512).min(MAX_POST_BODY));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|_| StatusCode::BAD_REQUEST)?;
        if buffer.len() + chunk.len() > MAX_POST_BODY {
            return Err(StatusCode::PAYLOAD_TOO_LARGE);
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.to_vec())
}

fn record(method: &Method, outcome: ResponseStatus, started: Instant) {
    let method = match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        _ => "other",
    };
    metrics::counter!(m::REQUESTS, "method" => method, "outcome" => outcome.as_str()).increment(1);
    metrics::histogram!(m::REQUEST_SECONDS, "method" => method).record(started.elapsed().as_secs_f64());
}

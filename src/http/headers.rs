//! Turning an [`Answer`] into HTTP: status, caching headers (RFC 9919 section 6), validators
//! and conditional requests.

use std::time::{Duration, UNIX_EPOCH};

use std::cell::RefCell;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder};

use crate::entry::CachedResponse;
use crate::ocsp::response::error_response;
use crate::ocsp::OcspErrorStatus;
use crate::pipeline::{Answer, Caching};

pub const OCSP_RESPONSE: &str = "application/ocsp-response";
/// Names the certificate a response is about, so a CDN can purge it by tag on revocation
/// (`Cache-Tag`; HTTP/1.1 header names are case-insensitive and actix sends them lower case).
pub const PURGE_TAG_HEADER: &str = "cache-tag";
/// Error responses and answers that must not be reused.
const NO_CACHE: &str = "max-age=0, no-cache";
/// How long after this responder heard of a certificate's status change an
/// `If-Modified-Since` date still cannot prove that the client holds the current status:
/// HTTP dates have whole seconds, thisUpdate is truncated to the minute, and a response read
/// just before the change can be signed (and dated) just after it. Covers that and clock
/// differences between responders.
pub const CHANGE_MARGIN_SECS: i64 = 5;

/// How long shared caches may keep successful responses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// `responses.max_age_cap`.
    pub max_age_cap: Option<Duration>,
    /// `responses.refresh_after`: a CDN must come back by then to see the re-signed response.
    pub refresh_after: Duration,
}

/// Builds the HTTP response for `answer`, honouring `If-None-Match` / `If-Modified-Since`.
pub fn respond(answer: &Answer, request: &HttpRequest, now: i64, policy: CachePolicy) -> HttpResponse {
    match answer {
        Answer::Error(status) => error(StatusCode::OK, *status),
        Answer::Response { response, caching, changed_at } => {
            let mut builder = match caching {
                Caching::Public => cacheable(response, now, policy),
                Caching::NoCache => uncacheable(NO_CACHE),
                Caching::NoStore => uncacheable("no-store"),
            };
            builder
                .insert_header((header::ETAG, response.headers.etag.clone()))
                .insert_header((HeaderName::from_static(PURGE_TAG_HEADER), response.headers.purge_tag.clone()));
            if *caching == Caching::Public && not_modified(request, response, *changed_at) {
                return builder.status(StatusCode::NOT_MODIFIED).finish();
            }
            builder.body(response.der.clone())
        }
    }
}

/// An OCSP error response (never HTML), uncacheable.
pub fn error(http_status: StatusCode, status: OcspErrorStatus) -> HttpResponse {
    HttpResponse::build(http_status)
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(OCSP_RESPONSE)))
        .insert_header((header::CACHE_CONTROL, NO_CACHE))
        .body(error_response(status))
}

/// max-age runs to the response's refresh deadline (thisUpdate + refresh_after, when the
/// responder re-signs it), never to nextUpdate: a CDN keeping it longer would never see the
/// refreshed response (BR 4.9.10).
fn cacheable(response: &CachedResponse, now: i64, policy: CachePolicy) -> HttpResponseBuilder {
    let refresh_at = response.facts.this_update.saturating_add(policy.refresh_after.as_secs() as i64);
    let mut max_age = response.facts.next_update.min(refresh_at).saturating_sub(now).max(0) as u64;
    if let Some(cap) = policy.max_age_cap {
        max_age = max_age.min(cap.as_secs());
    }
    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(OCSP_RESPONSE)))
        .insert_header((header::LAST_MODIFIED, response.headers.last_modified.clone()))
        .insert_header((header::EXPIRES, response.headers.expires.clone()))
        .insert_header((header::CACHE_CONTROL, public_cache_control(max_age)));
    builder
}

/// `max-age=N, public, no-transform, must-revalidate`. The hits of one second mostly share N
/// (their responses were signed in the same minute), so each thread keeps the values it made
/// last, by N: a hit then formats and allocates nothing.
fn public_cache_control(max_age: u64) -> HeaderValue {
    const KEPT: usize = 16;
    thread_local! {
        static MADE: RefCell<[Option<(u64, HeaderValue)>; KEPT]> = const { RefCell::new([const { None }; KEPT]) };
    }
    MADE.with(|made| {
        let mut made = made.borrow_mut();
        let slot = &mut made[(max_age % KEPT as u64) as usize];
        match slot {
            Some((kept, value)) if *kept == max_age => value.clone(),
            _ => {
                let text = format!("max-age={max_age}, public, no-transform, must-revalidate");
                let value = HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"));
                *slot = Some((max_age, value.clone()));
                value
            }
        }
    })
}

fn uncacheable(cache_control: &'static str) -> HttpResponseBuilder {
    let mut builder = HttpResponse::Ok();
    builder
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(OCSP_RESPONSE)))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static(cache_control)));
    builder
}

/// Whether a conditional GET or HEAD may be answered 304 (RFC 9110 section 13.2.2:
/// If-None-Match wins over If-Modified-Since; other methods ignore both).
///
/// An ETag names exact bytes, so a match proves the client holds this very response. A date
/// proves less: two responses with different statuses can carry the same Last-Modified (see
/// [`CHANGE_MARGIN_SECS`]). So `If-Modified-Since` earns a 304 only when its date is at least
/// that margin after this responder heard of the certificate's latest status change
/// (`changed_at`); earlier dates get the full response.
fn not_modified(request: &HttpRequest, response: &CachedResponse, changed_at: Option<i64>) -> bool {
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        return false;
    }
    let headers = request.headers();
    if let Some(value) = headers.get(header::IF_NONE_MATCH) {
        let Ok(value) = value.to_str() else { return false };
        return value
            .split(',')
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/").trim_matches('"').as_bytes() == response.etag_hex());
    }
    headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|since| since.duration_since(UNIX_EPOCH).ok())
        .map(|since| since.as_secs() as i64)
        .is_some_and(|since| {
            since >= response.facts.this_update
                && changed_at.is_none_or(|changed| since >= changed.saturating_add(CHANGE_MARGIN_SECS))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Facts;
    use actix_web::body::MessageBody;
    use actix_web::test::TestRequest;
    use std::sync::Arc;

    fn answer(caching: Caching) -> (Answer, Arc<CachedResponse>) {
        let facts = Facts {
            revoked: false,
            status_version: 0,
            this_update: 1_700_000_000,
            next_update: 1_700_345_600,
            not_after: i64::MAX,
        };
        let response = Arc::new(CachedResponse::new(b"0\x03\n\x01\x00", facts, "demo:0abc").unwrap());
        (Answer::Response { response: response.clone(), caching, changed_at: None }, response)
    }

    /// No cap; refresh after two days (the default), past the sample's nextUpdate here.
    const POLICY: CachePolicy = CachePolicy { max_age_cap: None, refresh_after: Duration::from_secs(48 * 3600) };

    fn header<'a>(r: &'a HttpResponse, name: &str) -> &'a str {
        r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }

    #[test]
    fn success_carries_rfc9919_caching_headers() {
        let (answer, response) = answer(Caching::Public);
        let now = 1_700_000_000 + 600;
        let r = respond(&answer, &TestRequest::default().to_http_request(), now, POLICY);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), OCSP_RESPONSE);
        assert_eq!(
            header(&r, "cache-control"),
            "max-age=172200, public, no-transform, must-revalidate",
            "max-age ends at the refresh deadline (thisUpdate + 48h), not at nextUpdate"
        );
        assert_eq!(header(&r, "last-modified"), "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(header(&r, "expires"), "Sat, 18 Nov 2023 22:13:20 GMT");
        let hex = std::str::from_utf8(response.etag_hex()).unwrap();
        assert_eq!(header(&r, "etag"), format!("\"{hex}\""));
        assert_eq!(header(&r, "cache-tag"), "demo:0abc");
        let capped = respond(
            &answer,
            &TestRequest::default().to_http_request(),
            now,
            CachePolicy { max_age_cap: Some(Duration::from_secs(3600)), ..POLICY },
        );
        assert_eq!(header(&capped, "cache-control"), "max-age=3600, public, no-transform, must-revalidate");
    }

    #[test]
    fn conditional_requests_get_304_without_body() {
        let (answer, response) = answer(Caching::Public);
        let tag = format!("\"{}\"", std::str::from_utf8(response.etag_hex()).unwrap());
        for request in [
            TestRequest::default().insert_header(("if-none-match", tag.as_str())).to_http_request(),
            TestRequest::default().insert_header(("if-none-match", format!("\"other\", W/{tag}"))).to_http_request(),
            TestRequest::default()
                .insert_header(("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"))
                .to_http_request(),
        ] {
            let r = respond(&answer, &request, 1_700_000_001, POLICY);
            assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
            assert!(matches!(
                r.into_body().size(),
                actix_web::body::BodySize::None | actix_web::body::BodySize::Sized(0)
            ));
        }
        for request in [
            TestRequest::default().insert_header(("if-none-match", "\"other\"")).to_http_request(),
            TestRequest::default()
                .insert_header(("if-modified-since", "Tue, 14 Nov 2023 22:13:19 GMT"))
                .to_http_request(),
            // If-None-Match decides when both are present.
            TestRequest::default()
                .insert_header(("if-none-match", "\"other\""))
                .insert_header(("if-modified-since", "Tue, 14 Nov 2023 22:13:20 GMT"))
                .to_http_request(),
        ] {
            assert_eq!(respond(&answer, &request, 1_700_000_001, POLICY).status(), StatusCode::OK);
        }
    }

    #[test]
    fn errors_and_nonce_answers_are_not_cacheable() {
        let r =
            respond(&Answer::Error(OcspErrorStatus::TryLater), &TestRequest::default().to_http_request(), 0, POLICY);
        assert_eq!(header(&r, "cache-control"), "max-age=0, no-cache");
        assert_eq!(header(&r, "content-type"), OCSP_RESPONSE);
        let (nonce, _) = answer(Caching::NoStore);
        let r = respond(&nonce, &TestRequest::default().to_http_request(), 0, POLICY);
        assert_eq!(header(&r, "cache-control"), "no-store");
        assert!(r.headers().get("expires").is_none());
    }
}

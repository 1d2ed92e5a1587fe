//! What makes a request malformed beyond its syntax (RFC 6960 section 4.4, RFC 5280 section
//! 4.2): a critical extension the responder does not understand, at the request or at the
//! single-request level, and a version other than v1. Real requests made by `openssl ocsp`,
//! changed with rasn, sent to the real binary over HTTP.

mod common;

use common::*;
use rasn::types::{Integer, ObjectIdentifier, OctetString, Oid};
use rasn_ocsp::{OcspRequest, OcspResponse, OcspResponseStatus};
use rasn_pkix::{Extension, Extensions};

/// An OID no OCSP specification defines (under the documentation arc 1.3.6.1.4.1.32473).
const UNKNOWN: &Oid = Oid::const_new(&[1, 3, 6, 1, 4, 1, 32473, 7]);
/// id-pkix-ocsp-nonce.
const NONCE: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 2]);
/// id-pkix-ocsp-service-locator: known, but jitocsp never forwards requests.
const SERVICE_LOCATOR: &Oid = Oid::const_new(&[1, 3, 6, 1, 5, 5, 7, 48, 1, 7]);

fn extension(oid: &'static Oid, critical: bool, value: &[u8]) -> Extension {
    Extension { extn_id: ObjectIdentifier::from(oid), critical, extn_value: OctetString::from_slice(value) }
}

/// Where to put an extension.
#[derive(Clone, Copy, Debug)]
enum Level {
    Request,
    SingleRequest,
}

/// `der` (an openssl request without extensions) with `ext` added at `level`.
fn with_extension(der: &[u8], level: Level, ext: Extension) -> Vec<u8> {
    let mut request: OcspRequest = rasn::der::decode(der).unwrap();
    let slot = match level {
        Level::Request => &mut request.tbs_request.request_extensions,
        Level::SingleRequest => &mut request.tbs_request.request_list[0].single_request_extensions,
    };
    assert!(slot.is_none(), "the base request has no extensions");
    *slot = Some(Extensions::from(vec![ext]));
    rasn::der::encode(&request).unwrap()
}

fn with_version(der: &[u8], version: i64) -> Vec<u8> {
    let mut request: OcspRequest = rasn::der::decode(der).unwrap();
    request.tbs_request.version = Integer::from(version);
    rasn::der::encode(&request).unwrap()
}

fn status_of(body: &[u8]) -> OcspResponseStatus {
    let response: OcspResponse = rasn::der::decode(body).unwrap_or_else(|e| panic!("not an OCSPResponse: {e}"));
    response.status
}

#[test]
fn critical_unknown_extensions_and_other_versions_are_malformed_requests() {
    if skip_unless(&[Need::Postgres, Need::Redis, Need::Openssl]) {
        return;
    }
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "5e01");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(&[]);
    let base = pki.request(&good, "-sha1");

    // Answered (and verified by openssl) as good: the extension is not critical, or critical
    // and understood (a nonce in requestExtensions).
    let answered = |what: &str, der: &[u8]| {
        let response = server.post(der);
        assert_eq!(response.status, 200, "{what}");
        assert_eq!(status_of(&response.body), OcspResponseStatus::Successful, "{what}");
        let text = openssl_check_response(&pki, &response.body, &good, "-sha1");
        assert!(text.contains("Response verify OK") && text.contains(": good"), "{what}: {text}");
    };
    // malformedRequest, by POST and by GET alike.
    let malformed = |what: &str, der: &[u8]| {
        let response = server.post(der);
        assert_eq!(status_of(&response.body), OcspResponseStatus::MalformedRequest, "POST {what}");
        assert_eq!(response.header("cache-control"), "max-age=0, no-cache", "POST {what}");
        let encoded = b64(der).replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
        let response = server.get(&format!("/{encoded}"), &[]);
        assert_eq!(status_of(&response.body), OcspResponseStatus::MalformedRequest, "GET {what}");
    };

    answered("the request as openssl made it", &base);
    for level in [Level::Request, Level::SingleRequest] {
        let unknown = |critical| extension(UNKNOWN, critical, &[0x05, 0x00]);
        malformed(
            &format!("critical unknown extension at {level:?} level"),
            &with_extension(&base, level, unknown(true)),
        );
        answered(
            &format!("non-critical unknown extension at {level:?} level"),
            &with_extension(&base, level, unknown(false)),
        );
        let locator = |critical| extension(SERVICE_LOCATOR, critical, &[0x30, 0x00]);
        malformed(
            &format!("critical service locator at {level:?} level"),
            &with_extension(&base, level, locator(true)),
        );
        answered(
            &format!("non-critical service locator at {level:?} level"),
            &with_extension(&base, level, locator(false)),
        );
    }
    let nonce =
        |critical| extension(NONCE, critical, &[0x04, 0x10, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
    answered("critical nonce in requestExtensions", &with_extension(&base, Level::Request, nonce(true)));
    malformed("critical nonce in singleRequestExtensions", &with_extension(&base, Level::SingleRequest, nonce(true)));

    malformed("version v2", &with_version(&base, 1));
    malformed("version 5", &with_version(&base, 5));
    answered("version v1", &with_version(&base, 0));
}

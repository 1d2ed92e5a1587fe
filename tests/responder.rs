//! End-to-end: `jitocsp serve` on real Postgres and Redis, checked by external judges
//! (`openssl ocsp`, Python `cryptography`, pkilint).

mod common;

use common::*;

/// Good, revoked (reason and time) and unissued serials, by POST and by GET, with SHA-1 and
/// SHA-256 CertIDs: openssl verifies every response against the issuer.
#[test]
fn openssl_verifies_good_revoked_and_unissued_by_post_and_get() {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "1001");
    let revoked = pki.leaf("revoked", "00f0020a");
    let unissued = pki.leaf("unissued", "1003");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap(), revoked.to_str().unwrap()], &[]);
    jitocsp_ok(
        &[
            "admin",
            "revoke",
            "--issuer",
            &issuer,
            "--serial",
            "F0:02:0A",
            "--reason",
            "keyCompromise",
            "--at",
            "2026-01-02T03:04:05Z",
        ],
        &[],
    );
    let server = Server::start(&[]);

    for digest in ["-sha1", "-sha256"] {
        let text = openssl_ocsp_query(&pki, &server, &good, digest);
        assert!(text.contains("Response verify OK"), "{digest}: {text}");
        assert!(text.contains(&format!("{}: good", good.display())), "{digest}: {text}");

        let text = openssl_ocsp_query(&pki, &server, &revoked, digest);
        assert!(text.contains("Response verify OK"), "{digest}: {text}");
        assert!(text.contains(": revoked"), "{digest}: {text}");
        assert!(text.contains("Reason: keyCompromise"), "{digest}: {text}");
        assert!(text.contains("Revocation Time: Jan  2 03:04:05 2026 GMT"), "{digest}: {text}");

        let text = openssl_ocsp_query(&pki, &server, &unissued, digest);
        assert!(text.contains("Responder Error: unauthorized (6)"), "{digest}: {text}");
    }

    // GET through curl, the request base64-encoded raw and URL-encoded.
    for digest in ["-sha1", "-sha256"] {
        for (cert, expected) in [(&good, ": good"), (&revoked, ": revoked")] {
            let der = pki.request(cert, digest);
            let plain = b64(&der);
            let encoded = plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D");
            for path in [format!("/{plain}"), format!("/{encoded}")] {
                let out = pki.file(&unique("curl"));
                let status = run(
                    "curl",
                    &[
                        "-sS",
                        "--path-as-is",
                        "-o",
                        out.to_str().unwrap(),
                        "-w",
                        "%{http_code}",
                        &format!("{}{path}", server.url()),
                    ],
                    pki.path(),
                );
                assert_eq!(String::from_utf8_lossy(&status.stdout), "200", "{path}");
                let body = std::fs::read(&out).unwrap();
                let text = openssl_check_response(&pki, &body, cert, digest);
                assert!(text.contains("Response verify OK") && text.contains(expected), "{digest} GET {path}: {text}");
            }
        }
    }
}

/// Python `cryptography` loads every success and error response, and pkilint finds nothing
/// wrong with good, revoked and multi-CertID responses.
#[test]
fn cryptography_and_pkilint_accept_the_responses() {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "2001");
    let revoked = pki.leaf("revoked", "2002");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap(), revoked.to_str().unwrap()], &[]);
    jitocsp_ok(&["admin", "revoke", "--issuer", &issuer, "--serial", "2002", "--reason", "superseded"], &[]);
    let server = Server::start(&[]);
    let ca = pki.file("ca.pem");
    let ca = ca.to_str().unwrap();

    let response = server.post(&pki.request(&good, "-sha1"));
    judge(
        &pki,
        &response.body,
        &["--issuer", ca, "--expect-status", "successful", "--expect-cert-status", "good", "--lint"],
    );
    let response = server.post(&pki.request(&revoked, "-sha256"));
    judge(
        &pki,
        &response.body,
        &["--issuer", ca, "--expect-status", "successful", "--expect-cert-status", "revoked", "--lint"],
    );

    // Two CertIDs in one request, answered in one response.
    let multi = pki.file("multi.req");
    let output = run(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            "ca.pem",
            "-cert",
            "good.pem",
            "-cert",
            "revoked.pem",
            "-no_nonce",
            "-reqout",
            multi.to_str().unwrap(),
        ],
        pki.path(),
    );
    assert!(output.status.success());
    let response = server.post(&std::fs::read(&multi).unwrap());
    let text = judge(&pki, &response.body, &["--issuer", ca, "--expect-status", "successful", "--lint"]);
    assert!(text.contains("good") && text.contains("revoked"), "{text}");

    // Error responses load too.
    let response = server.post(b"garbage");
    judge(&pki, &response.body, &["--expect-status", "malformedRequest"]);
    let response = server.post(&pki.request_serial("7777", "-sha1"));
    judge(&pki, &response.body, &["--expect-status", "unauthorized"]);
}

/// Invariant 2: a CertID of an issuer not served here gets unauthorized and costs no
/// signature; bad input gets malformedRequest; oversized bodies are refused.
#[test]
fn unknown_issuer_garbage_truncation_and_oversize() {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "3001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(&[]);

    let stranger = Pki::new();
    let foreign = stranger.leaf("foreign", "3001");
    let request = stranger.request(&foreign, "-sha1");
    let response = server.post(&request);
    assert_eq!(response.body, [0x30, 0x03, 0x0a, 0x01, 0x06], "unauthorized");
    assert_eq!(response.header("cache-control"), "max-age=0, no-cache");
    assert_eq!(response.header("content-type"), "application/ocsp-response");
    assert_eq!(server.metric("jitocsp_signatures_total", &[]), 0.0, "no signature for an unknown issuer");

    let malformed = [0x30, 0x03, 0x0a, 0x01, 0x01];
    assert_eq!(server.post(b"").body, malformed);
    assert_eq!(server.post(b"\x30\x82\xff\xff not DER").body, malformed);
    let valid = pki.request(&good, "-sha1");
    for cut in [1, 2, valid.len() / 2, valid.len() - 1] {
        let response = server.post(&valid[..cut]);
        assert_eq!((response.status, response.body.as_slice()), (200, malformed.as_slice()), "truncated at {cut}");
    }
    assert_eq!(server.get("/not-base64!", &[]).body, malformed);
    assert_eq!(server.get("/", &[]).body, malformed);

    let limit = 10 * 1024;
    let response = server.post(&vec![0x30; limit + 1]);
    assert_eq!(response.status, 413);
    assert_eq!(response.body, malformed);
    let response = server.post(&vec![0x30; limit]);
    assert_eq!(
        (response.status, response.body.as_slice()),
        (200, malformed.as_slice()),
        "at the limit: parsed, not refused"
    );
    assert_eq!(server.metric("jitocsp_signatures_total", &[]), 0.0);
}

/// HEAD answers as GET without a body; a matching validator gets 304.
#[test]
fn head_and_conditional_get() {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "4001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(&[]);
    let path = format!("/{}", b64(&pki.request(&good, "-sha1")));

    let get = server.get(&path, &[]);
    assert_eq!(get.status, 200);
    assert!(openssl_check_response(&pki, &get.body, &good, "-sha1").contains(": good"));
    let etag = get.header("etag").to_owned();
    assert_eq!(etag.len(), 66, "quoted hex SHA-256: {etag}");
    assert!(get.header("cache-control").starts_with("max-age="));
    assert!(get.header("cache-control").ends_with(", public, no-transform, must-revalidate"));
    assert!(get.header("last-modified").ends_with(" GMT") && get.header("expires").ends_with(" GMT"));
    assert_eq!(get.header("cache-tag"), format!("{issuer}:4001"));

    let head = block_on(http(server.port, "HEAD", &path, &[], &[])).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    for name in ["etag", "cache-control", "last-modified", "expires", "content-type"] {
        assert_eq!(head.header(name), get.header(name), "{name}");
    }

    let not_modified = server.get(&path, &[("If-None-Match", &etag)]);
    assert_eq!(not_modified.status, 304);
    assert!(not_modified.body.is_empty());
    let last_modified = get.header("last-modified").to_owned();
    assert_eq!(server.get(&path, &[("If-Modified-Since", &last_modified)]).status, 304);
    assert_eq!(server.get(&path, &[("If-None-Match", "\"something-else\"")]).status, 200);
}

/// Every spelling of a GET path that clients and proxies produce reaches the same answer.
#[test]
fn get_path_encodings() {
    let pki = Pki::new();
    let issuer = add_issuer(&pki);
    let good = pki.leaf("good", "5001");
    jitocsp_ok(&["admin", "import", "--issuer", &issuer, good.to_str().unwrap()], &[]);
    let server = Server::start(&[("JITOCSP_SERVER_PATH_PREFIX", "/ocsp")]);
    // Try serials until the request's base64 contains '+' and '/', the characters that break.
    // The SHA-256 request's base64 is long enough that '+' or '/' almost always occur; either
    // way every variant below must decode.
    let der = pki.request(&good, "-sha256");
    let plain = b64(&der);
    let variants = [
        format!("/ocsp/{plain}"),
        format!("/ocsp//{plain}"),
        format!("/ocsp/{}", plain.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")),
        format!("/ocsp/{}", plain.replace('+', "%20")),
        format!("/ocsp/{}", plain.trim_end_matches('=')),
    ];
    for path in variants {
        let response = server.get(&path, &[]);
        assert_eq!(response.status, 200, "{path}");
        let text = openssl_check_response(&pki, &response.body, &good, "-sha256");
        assert!(text.contains(": good"), "{path}: {text}");
    }
    let response = server.get(&format!("/{plain}"), &[]);
    assert_eq!(response.body, [0x30, 0x03, 0x0a, 0x01, 0x01], "outside the prefix");
}

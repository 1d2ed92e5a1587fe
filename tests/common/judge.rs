//! The external judges of responses: `openssl ocsp` and tests/judges/judge.py (Python
//! `cryptography` and pkilint).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{judge_command, run, unique, HttpResponse, Pki, Server};

/// Runs `openssl ocsp` on a saved response about `cert` (CertID hashed with `digest`) and
/// returns its combined output.
pub fn openssl_check_response(pki: &Pki, response: &[u8], cert: &Path, digest: &str) -> String {
    let file = pki.file(&format!("{}.der", unique("resp")));
    std::fs::write(&file, response).unwrap();
    let output = run(
        "openssl",
        &[
            "ocsp",
            "-respin",
            file.to_str().unwrap(),
            "-issuer",
            "ca.pem",
            digest,
            "-cert",
            cert.to_str().unwrap(),
            "-CAfile",
            "ca.pem",
        ],
        pki.path(),
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// The external judge (tests/judges/judge.py): Python `cryptography` parses the response,
/// verifies the signature, and pkilint lints it. Returns the judge's output; panics if it failed.
pub fn judge(pki: &Pki, response: &[u8], args: &[&str]) -> String {
    let file = pki.file(&format!("{}.der", unique("judged")));
    std::fs::write(&file, response).unwrap();
    let (python, script) = judge_command();
    assert!(script.is_file(), "the judge {} does not exist (JITOCSP_TEST_JUDGE)", script.display());
    let mut all = vec![script.to_str().unwrap(), file.to_str().unwrap()];
    all.extend_from_slice(args);
    let output = run(&python, &all, pki.path());
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "judge {args:?} refused the response:\n{text}");
    text
}

/// Puts one HTTP exchange through the judge: the response is verified against the PKI's CA
/// and linted, every CertID of `request` must be echoed byte for byte (`--request`, which also
/// checks the nonce), and the HTTP headers must agree with the DER (`--headers`). `args` add
/// the expectations (status, cert status, caching policy, ...).
pub fn judge_exchange(pki: &Pki, request: &[u8], response: &HttpResponse, args: &[&str]) -> String {
    assert_eq!(response.status, 200, "HTTP status");
    let name = unique("exchange");
    let request_file = pki.file(&format!("{name}.req"));
    std::fs::write(&request_file, request).unwrap();
    let headers_file = pki.file(&format!("{name}.headers"));
    let headers: String = response.headers.iter().map(|(k, v)| format!("{k}: {v}\n")).collect();
    std::fs::write(&headers_file, headers).unwrap();
    let ca = pki.file("ca.pem");
    let mut all = vec![
        "--issuer",
        ca.to_str().unwrap(),
        "--request",
        request_file.to_str().unwrap(),
        "--headers",
        headers_file.to_str().unwrap(),
        "--lint",
    ];
    all.extend_from_slice(args);
    judge(pki, &response.body, &all)
}

/// Invariant 1 on several instances at once. `revoked_at` is when `admin revoke` returned.
/// Asks every instance about `cert` until each has answered revoked; an answer of good to a
/// request sent more than a second after `revoked_at` fails the test, whichever instance gave
/// it and however long the others took, as does any answer that does not verify. Once an
/// instance answered revoked it must keep doing so. Returns, per instance, how long after
/// `revoked_at` the first request that got revoked was sent.
pub fn assert_revoked_everywhere(
    servers: &[&Server],
    pki: &Pki,
    request: &[u8],
    cert: &Path,
    digest: &str,
    revoked_at: Instant,
) -> Vec<Duration> {
    let deadline = revoked_at + Duration::from_secs(1);
    let mut seen: Vec<Option<Duration>> = vec![None; servers.len()];
    while seen.iter().any(Option::is_none) {
        for (i, server) in servers.iter().enumerate() {
            if seen[i].is_some() {
                continue;
            }
            let sent = Instant::now();
            let text = openssl_check_response(pki, &server.post(request).body, cert, digest);
            assert!(text.contains("Response verify OK"), "instance {i}: {text}");
            if text.contains(": revoked") {
                seen[i] = Some(sent - revoked_at);
            } else {
                assert!(text.contains(": good"), "instance {i}: {text}");
                assert!(
                    sent <= deadline,
                    "instance {i} answered good to a request sent {:?} after the revocation returned:\n{text}",
                    sent - revoked_at
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for (i, server) in servers.iter().enumerate() {
        for _ in 0..5 {
            let text = openssl_check_response(pki, &server.post(request).body, cert, digest);
            assert!(text.contains(": revoked") && text.contains("Response verify OK"), "instance {i} again: {text}");
        }
    }
    seen.into_iter().map(Option::unwrap_or_default).collect()
}

/// `openssl ocsp` against a running server for `cert` of `pki`, verifying with the CA;
/// returns stdout and stderr together (with `-resp_text`).
pub fn openssl_ocsp_query(pki: &Pki, server: &Server, cert: &Path, digest: &str) -> String {
    let ca = pki.file("ca.pem");
    let output = run(
        "openssl",
        &[
            "ocsp",
            "-issuer",
            ca.to_str().unwrap(),
            digest,
            "-cert",
            cert.to_str().unwrap(),
            "-url",
            &server.url(),
            "-CAfile",
            ca.to_str().unwrap(),
            "-no_nonce",
            "-resp_text",
        ],
        pki.path(),
    );
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

//! Signing ceilings: the raw rate of jitocsp's own software signer with each P-256 backend
//! (the code `jitocsp serve` signs with, on 1 and 2 threads, a ResponseData-sized message),
//! and `openssl speed ecdsap256` as the machine's ceiling. Measured when nothing of ours runs.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use jitocsp::ocsp::request::{self, CertIdParts, CertIdVariant};
use jitocsp::ocsp::response::{encode_response_data, CertStatusAnswer, SingleAnswer, TbsResponseData};
use jitocsp::signer::software::SoftwareSigner;
use jitocsp::signer::{P256Backend, Signer as _};
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct Ceiling {
    /// `ring`, `p256` or `openssl`.
    pub implementation: String,
    pub threads: usize,
    pub rate: f64,
}

pub fn backend(name: &str) -> anyhow::Result<P256Backend> {
    match name {
        "ring" => Ok(P256Backend::Ring),
        "p256" => Ok(P256Backend::P256),
        other => Err(anyhow!("unknown P-256 backend {other:?} (ring | p256)")),
    }
}

/// A real ResponseData to sign (signers sign nothing else): one good answer, as `jitocsp
/// serve` makes for a SHA-256 CertID.
fn response_data() -> anyhow::Result<TbsResponseData> {
    let parts = CertIdParts {
        variant: CertIdVariant::Sha256Null,
        issuer_name_hash: &[0x11; 32],
        issuer_key_hash: &[0x22; 32],
        serial: &[0x5a; 16],
    };
    let request = request::parse(&request::encode(&[parts], None))?;
    let cert = request.certs.first().ok_or_else(|| anyhow!("the encoded request has no CertID"))?;
    let now = chrono::Utc::now();
    let answer =
        SingleAnswer { cert_id: &cert.cert_id, status: CertStatusAnswer::Good, this_update: now, next_update: now };
    Ok(encode_response_data(&[0x33; 20], now, &[answer], None)?)
}

/// Signatures per second with `key_pem` on `threads` threads for `seconds`.
fn signer_rate(key_pem: &[u8], backend: P256Backend, threads: usize, seconds: f64) -> anyhow::Result<f64> {
    let signer = SoftwareSigner::from_pem(key_pem, backend, "bench CA key")?;
    let tbs = response_data()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let total = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    // The software signer signs within the poll: the runtime adds no thread hop.
                    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
                    let mut count = 0u64;
                    while Instant::now() < deadline {
                        for _ in 0..64 {
                            runtime.block_on(signer.sign(&tbs))?;
                            count += 1;
                        }
                    }
                    Ok::<_, anyhow::Error>(count)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("signing thread panicked"))?)
            .sum::<anyhow::Result<u64>>()
    })?;
    Ok(total as f64 / start.elapsed().as_secs_f64())
}

/// `openssl speed -seconds S [-multi N] ecdsap256`: the sign/s column of the nistp256 line.
fn openssl_rate(processes: usize, seconds: u64) -> anyhow::Result<f64> {
    let mut command = Command::new("openssl");
    command.args(["speed", "-seconds", &seconds.to_string()]);
    if processes > 1 {
        command.args(["-multi", &processes.to_string()]);
    }
    let output = command.arg("ecdsap256").output().context("running openssl speed")?;
    let text = String::from_utf8_lossy(&output.stdout);
    // " 256 bits ecdsa (nistp256)   0.0000s   0.0001s  41234.5  13456.7"
    text.lines()
        .find(|l| l.contains("ecdsa (nistp256)"))
        .and_then(|l| l.split_whitespace().rev().nth(1)?.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("cannot read openssl speed's output: {text}"))
}

pub fn ceilings(key_pem: &[u8], seconds: u64) -> anyhow::Result<Vec<Ceiling>> {
    let mut out = Vec::new();
    for (name, backend) in [("ring", P256Backend::Ring), ("p256", P256Backend::P256)] {
        for threads in [1, 2] {
            let rate = signer_rate(key_pem, backend, threads, seconds as f64)?;
            out.push(Ceiling { implementation: name.into(), threads, rate });
        }
    }
    for processes in [1, 2] {
        out.push(Ceiling {
            implementation: "openssl".into(),
            threads: processes,
            rate: openssl_rate(processes, seconds)?,
        });
    }
    Ok(out)
}

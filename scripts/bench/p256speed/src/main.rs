//! Raw ECDSA P-256 signing rate of the two software backends jitocsp can use
//! (`signing.p256_backend`): `ring` (assembly) and `p256` (RustCrypto, pure Rust), signing a
//! message the size of an OCSP ResponseData and producing a DER signature, as
//! src/signer/software.rs does.
//!
//! Usage: p256speed SECONDS BACKEND THREADS...   (BACKEND: ring | p256) prints one line per
//! thread count:  threads=N signs=COUNT seconds=S rate=SIGNS_PER_SECOND impl=BACKEND

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use std::time::{Duration, Instant};

fn sign_loop(backend: &str, t: usize, deadline: Instant) -> u64 {
    let mut message = [0x5au8; 160];
    let mut count = 0u64;
    match backend {
        "p256" => {
            let key = SigningKey::from_slice(&[(t as u8).wrapping_add(7); 32]).expect("key");
            loop {
                for _ in 0..64 {
                    message[..8].copy_from_slice(&count.to_le_bytes());
                    let signature: Signature = key.sign(&message);
                    std::hint::black_box(signature.to_der());
                    count += 1;
                }
                if Instant::now() >= deadline {
                    return count;
                }
            }
        }
        "ring" => {
            let rng = SystemRandom::new();
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("keygen");
            let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).expect("key");
            loop {
                for _ in 0..64 {
                    message[..8].copy_from_slice(&count.to_le_bytes());
                    let signature = key.sign(&rng, &message).expect("sign");
                    std::hint::black_box(signature.as_ref().to_vec());
                    count += 1;
                }
                if Instant::now() >= deadline {
                    return count;
                }
            }
        }
        other => {
            eprintln!("p256speed: unknown backend {other:?} (ring | p256)");
            std::process::exit(2);
        }
    }
}

fn run(backend: &str, threads: usize, seconds: f64) -> (u64, f64) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let backend = backend.to_owned();
            std::thread::spawn(move || sign_loop(&backend, t, deadline))
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    (total, start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: p256speed SECONDS BACKEND THREADS...   (BACKEND: ring | p256)");
        std::process::exit(2);
    }
    let seconds: f64 = args[0].parse().expect("SECONDS");
    let backend = args[1].as_str();
    for threads in &args[2..] {
        let threads: usize = threads.parse().expect("THREADS");
        let (signs, elapsed) = run(backend, threads, seconds);
        println!(
            "threads={threads} signs={signs} seconds={elapsed:.3} rate={:.0} impl={backend}",
            signs as f64 / elapsed
        );
    }
}

//! Raw signing rate of the `p256` crate, the way jitocsp's software signer uses it
//! (`SigningKey::sign` over a message the size of an OCSP ResponseData, DER-encoded signature).
//!
//! Usage: p256speed SECONDS THREADS...   prints one line per thread count:
//!   threads=N signs=COUNT seconds=S rate=SIGNS_PER_SECOND

use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use std::time::{Duration, Instant};

fn run(threads: usize, seconds: f64) -> (u64, f64) {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let key = SigningKey::from_slice(&[(t as u8).wrapping_add(7); 32]).expect("key");
                let mut message = [0x5au8; 160];
                let mut count = 0u64;
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
            })
        })
        .collect();
    let total: u64 = handles.into_iter().map(|h| h.join().expect("thread")).sum();
    (total, start.elapsed().as_secs_f64())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: p256speed SECONDS THREADS...");
        std::process::exit(2);
    }
    let seconds: f64 = args[0].parse().expect("SECONDS");
    for threads in &args[1..] {
        let threads: usize = threads.parse().expect("THREADS");
        let (signs, elapsed) = run(threads, seconds);
        println!("threads={threads} signs={signs} seconds={elapsed:.3} rate={:.0}", signs as f64 / elapsed);
    }
}

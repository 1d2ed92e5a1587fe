//! The open-loop scheduler: what each request asks ([`Sampler`]) and when it is sent
//! ([`schedule`]), from the arrival process alone, so that a slow server makes requests late
//! (and that lateness is measured), never fewer. The connections that send them are in
//! [`crate::gen`].

use std::time::{Duration, Instant};

use anyhow::anyhow;
use hdrhistogram::Histogram;
use rand::{Rng as _, SeedableRng as _};
use rand_distr::Distribution as _;

use crate::corpus::{Corpus, HashAlg};
use crate::gen::{new_histogram, Ask, Job, Recorder, Requested};

/// Draws requests: issuer uniformly, certificate by Zipf popularity, hash and method by share.
pub struct Sampler {
    rng: rand::rngs::StdRng,
    zipf: rand_distr::Zipf<f64>,
    issuers: u16,
    post_share: f64,
    sha256_share: f64,
    verify_every: u64,
    verify_first: u64,
    drawn: u64,
}

impl Sampler {
    pub fn new(
        corpus: &Corpus,
        zipf_s: f64,
        post_share: f64,
        sha256_share: f64,
        verify_every: u64,
        seed: u64,
    ) -> anyhow::Result<Sampler> {
        let zipf = rand_distr::Zipf::new(corpus.count as f64, zipf_s).map_err(|e| anyhow!("--zipf {zipf_s}: {e}"))?;
        Ok(Sampler {
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            zipf,
            issuers: corpus.issuers.len() as u16,
            post_share,
            sha256_share,
            verify_every: verify_every.max(1),
            verify_first: 1000,
            drawn: 0,
        })
    }

    pub fn draw(&mut self, intended: Instant, step: usize) -> Job {
        let rank = self.zipf.sample(&mut self.rng) as u64;
        let issuer = if self.issuers > 1 { self.rng.random_range(0..self.issuers) } else { 0 };
        let alg = if self.sha256_share > 0.0 && self.rng.random_bool(self.sha256_share) {
            HashAlg::Sha256
        } else {
            HashAlg::Sha1
        };
        let post = self.post_share > 0.0 && self.rng.random_bool(self.post_share);
        self.drawn += 1;
        let check_signature = self.drawn <= self.verify_first || self.drawn % self.verify_every == 0;
        Job { intended, step, ask: Ask::Ocsp { issuer, index: rank.saturating_sub(1), alg, post }, check_signature }
    }
}

/// One step of an open-loop schedule.
pub struct Phase {
    pub rate: f64,
    pub start: Duration,
    pub duration: Duration,
    /// Run (on its own thread) when the step begins: the CDN purge.
    pub on_start: Option<Box<dyn FnOnce() + Send>>,
}

/// What the scheduler saw: per step, how late it handed requests over.
pub struct SchedulerReport {
    pub lag_us: Vec<Histogram<u64>>,
}

/// An open-loop schedule: its steps, when it starts, and the arrival process.
pub struct Plan {
    pub phases: Vec<Phase>,
    pub t0: Instant,
    pub poisson: bool,
    /// The schedule stops after this many requests, whatever the phases say.
    pub max_requests: u64,
}

/// Runs the schedule on the calling thread: each request's intended time comes from the
/// arrival process only; every request whose time has come is handed to the connections at
/// once. A full queue (more than the channel's capacity waiting for a connection) is recorded
/// as a generator failure, never silently skipped. GET URLs are marked in `requested`; what
/// was scheduled is counted in `rec`, returned to be merged with what the connections recorded.
pub fn schedule(
    plan: Plan,
    mut sampler: Sampler,
    tx: async_channel::Sender<Job>,
    mut rec: Recorder,
    requested: Option<&Requested>,
) -> (SchedulerReport, Recorder) {
    let Plan { phases, t0, poisson, max_requests } = plan;
    let mut lag = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5c4e_d01e);
    let exp = rand_distr::Exp1;
    let mut sent = 0u64;
    let mut purges = Vec::new();
    for (step, phase) in phases.into_iter().enumerate() {
        let mut hist = new_histogram();
        let start = t0 + phase.start;
        let end = start + phase.duration;
        let now = Instant::now();
        if start > now {
            std::thread::sleep(start - now);
        }
        if let Some(f) = phase.on_start {
            purges.push(std::thread::spawn(f));
        }
        let mean = 1.0 / phase.rate.max(1e-9);
        let gap = |rng: &mut rand::rngs::StdRng| {
            let x: f64 = if poisson { exp.sample(rng) } else { 1.0 };
            Duration::from_secs_f64(x * mean)
        };
        let mut next = start + if poisson { gap(&mut rng) } else { Duration::ZERO };
        while next < end && sent < max_requests {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
                continue;
            }
            let _ = hist.record(now.saturating_duration_since(next).as_micros().max(1) as u64);
            let job = sampler.draw(next, step);
            if let (Some(r), Ask::Ocsp { issuer, index, alg, post: false }) = (requested, job.ask) {
                r.mark(issuer, index, alg);
            }
            rec.scheduled(&job);
            if tx.try_send(job).is_err() {
                rec.steps[step].backlog_dropped += 1;
                *rec.steps[step].failures.entry("generator backlog full").or_default() += 1;
            }
            sent += 1;
            next += gap(&mut rng);
        }
        lag.push(hist);
    }
    for p in purges {
        let _ = p.join();
    }
    (SchedulerReport { lag_us: lag }, rec)
}

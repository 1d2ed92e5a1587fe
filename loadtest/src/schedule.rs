//! The open-loop scheduler: what each request asks ([`Sampler`]) and when it is sent
//! ([`dispatch`], on each generator thread), from the arrival process alone, so that a slow server makes requests late
//! (and that lateness is measured), never fewer. The connections that send them are in
//! [`crate::gen`].

use std::cell::RefCell;
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

/// What the dispatchers saw: per step, how late they handed requests over.
pub struct SchedulerReport {
    pub lag_us: Vec<Histogram<u64>>,
}

impl SchedulerReport {
    /// The report of all generator threads together.
    pub fn merged(reports: impl IntoIterator<Item = SchedulerReport>) -> SchedulerReport {
        let mut lag_us: Vec<Histogram<u64>> = Vec::new();
        for report in reports {
            for (step, hist) in report.lag_us.into_iter().enumerate() {
                match lag_us.get_mut(step) {
                    Some(all) => crate::gen::add_histogram(all, &hist),
                    None => lag_us.push(hist),
                }
            }
        }
        SchedulerReport { lag_us }
    }
}

/// One generator thread's share of an open-loop schedule: its steps (at the thread's share of
/// each step's rate), when they start, and the arrival process.
pub struct Plan {
    /// (rate, start, duration) of each step, the rate already this thread's share.
    pub steps: Vec<(f64, Duration, Duration)>,
    pub t0: Instant,
    pub poisson: bool,
    /// This thread stops after this many requests, whatever the steps say.
    pub max_requests: u64,
    /// Seeds the arrival process (each thread its own).
    pub seed: u64,
}

/// Runs `plan` on the calling generator thread's runtime: each request's intended time comes
/// from the arrival process only; every request whose time has come is handed at once to the
/// thread's connections through `tx`. A full queue (more than its capacity waiting for a
/// connection) is recorded as a generator failure, never silently skipped. GET URLs are marked
/// in `requested`; what was scheduled is counted in `rec`.
///
/// Each generator thread runs its own arrival process at its share of the rate (the sum of
/// independent Poisson processes is a Poisson process of the summed rate), so no request
/// crosses threads: a scheduler thread handing every request to the generator threads cost
/// a wake-up of another thread per request, about a third of the generator's CPU
/// (docs/benchmarks.md). Tokio's timer wakes the dispatcher at most once a millisecond, and
/// it then sends everything due; a request sent late by that is measured from when it was
/// due, and the lateness is reported as the scheduler's lag.
pub async fn dispatch(
    plan: Plan,
    mut sampler: Sampler,
    tx: async_channel::Sender<Job>,
    rec: &RefCell<Recorder>,
    requested: Option<&Requested>,
) -> SchedulerReport {
    let Plan { steps, t0, poisson, max_requests, seed } = plan;
    let mut lag = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let exp = rand_distr::Exp1;
    let mut sent = 0u64;
    for (step, (rate, start, duration)) in steps.into_iter().enumerate() {
        let mut hist = new_histogram();
        let (start, end) = (t0 + start, t0 + start + duration);
        tokio::time::sleep_until(start.into()).await;
        let mean = 1.0 / rate.max(1e-9);
        let gap = |rng: &mut rand::rngs::StdRng| {
            let x: f64 = if poisson { exp.sample(rng) } else { 1.0 };
            Duration::from_secs_f64(x * mean)
        };
        let mut next = start + if poisson { gap(&mut rng) } else { Duration::ZERO };
        while next < end && sent < max_requests {
            let now = Instant::now();
            if next > now {
                tokio::time::sleep_until(next.into()).await;
                continue;
            }
            let _ = hist.record(now.saturating_duration_since(next).as_micros().max(1) as u64);
            let job = sampler.draw(next, step);
            if let (Some(r), Ask::Ocsp { issuer, index, alg, post: false }) = (requested, job.ask) {
                r.mark(issuer, index, alg);
            }
            let mut rec = rec.borrow_mut();
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
    SchedulerReport { lag_us: lag }
}

/// Runs each step's `on_start` (the CDN purges) on a thread of its own when the step begins,
/// apart from the dispatchers; returns when every one has finished.
pub fn run_step_hooks(t0: Instant, hooks: Vec<(Duration, Box<dyn FnOnce() + Send>)>) {
    let mut running = Vec::new();
    for (start, hook) in hooks {
        let now = Instant::now();
        if t0 + start > now {
            std::thread::sleep(t0 + start - now);
        }
        running.push(std::thread::spawn(hook));
    }
    for hook in running {
        let _ = hook.join();
    }
}

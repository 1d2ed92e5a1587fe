//! Reads the responder's Prometheus metrics, so that each step can report what the origin did
//! (Redis hit ratio, signatures/s, Postgres reads/s), not only what the client saw.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::wire::Wire;

/// The counters that matter here, summed over their labels.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    pub signatures: f64,
    pub db_reads: f64,
    pub redis_hits: f64,
    /// Every Redis lookup result (hit, miss, stale, verified, unusable, corrupt).
    pub redis_lookups: f64,
    pub requests: f64,
    pub try_later: f64,
    pub local_hits: f64,
    pub successful: f64,
    pub signer_overloaded: f64,
    pub redis_errors: f64,
    pub db_errors: f64,
}

impl Counters {
    fn add(&mut self, other: &Counters) {
        self.signatures += other.signatures;
        self.db_reads += other.db_reads;
        self.redis_hits += other.redis_hits;
        self.redis_lookups += other.redis_lookups;
        self.requests += other.requests;
        self.try_later += other.try_later;
        self.local_hits += other.local_hits;
        self.successful += other.successful;
        self.signer_overloaded += other.signer_overloaded;
        self.redis_errors += other.redis_errors;
        self.db_errors += other.db_errors;
    }
}

/// Sum of every sample of metric `name` whose label set contains all `labels`.
pub fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

pub fn parse(text: &str) -> Counters {
    use jitocsp::metrics as m;
    Counters {
        signatures: sum(text, m::SIGNATURES, &[]),
        db_reads: sum(text, m::DB_READS, &[]),
        redis_hits: sum(text, m::CACHE_LOOKUPS, &["tier=\"redis\"", "result=\"hit\""]),
        redis_lookups: sum(text, m::CACHE_LOOKUPS, &["tier=\"redis\""]),
        requests: sum(text, m::REQUESTS, &[]),
        try_later: sum(text, m::REQUESTS, &["outcome=\"tryLater\""]),
        local_hits: sum(text, m::CACHE_LOOKUPS, &["tier=\"local\"", "result=\"hit\""]),
        successful: sum(text, m::REQUESTS, &["outcome=\"successful\""]),
        signer_overloaded: sum(text, m::SIGNER_OVERLOADED, &[]),
        redis_errors: sum(text, m::REDIS_ERRORS, &[]),
        db_errors: sum(text, m::DB_ERRORS, &[]),
    }
}

/// GET /metrics from `addr` (one short connection).
pub async fn fetch(addr: SocketAddr) -> anyhow::Result<Counters> {
    let text = tokio::time::timeout(Duration::from_secs(5), async {
        let mut wire = Wire::connect(addr).await.map_err(|f| anyhow::anyhow!("{addr}/metrics: {}", f.what()))?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        let answer =
            wire.exchange(request.as_bytes()).await.map_err(|f| anyhow::anyhow!("{addr}/metrics: {}", f.what()))?;
        anyhow::ensure!(answer.status == 200, "{addr}/metrics: HTTP {}", answer.status);
        Ok::<_, anyhow::Error>(String::from_utf8_lossy(answer.body).into_owned())
    })
    .await
    .map_err(|_| anyhow::anyhow!("{addr}/metrics: no answer within 5 s"))??;
    Ok(parse(&text))
}

/// A sample of the counters at a moment (seconds since the run's start).
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: f64,
    pub counters: Counters,
    pub cpu: f64,
    /// The machine's CPU counters, when the sampler was told whose they are.
    pub machine: Option<crate::cpu::Snapshot>,
}

/// Figures between two samples.
#[derive(Clone, Copy, Debug, Default)]
pub struct Delta {
    pub signatures_per_s: f64,
    pub db_reads_per_s: f64,
    pub origin_rps: f64,
    pub origin_try_later: f64,
    pub redis_hit_ratio: Option<f64>,
    pub generator_cpu: f64,
}

pub fn delta(a: &Sample, b: &Sample) -> Delta {
    let s = (b.at - a.at).max(1e-9);
    let (x, y) = (&a.counters, &b.counters);
    let lookups = y.redis_lookups - x.redis_lookups;
    Delta {
        signatures_per_s: (y.signatures - x.signatures) / s,
        db_reads_per_s: (y.db_reads - x.db_reads) / s,
        origin_rps: (y.requests - x.requests) / s,
        origin_try_later: y.try_later - x.try_later,
        redis_hit_ratio: (lookups > 0.0).then(|| (y.redis_hits - x.redis_hits) / lookups),
        generator_cpu: (b.cpu - a.cpu) / s,
    }
}

/// Samples the responders' counters, summed (and our CPU, and with `who` the machine's), at
/// the given offsets from `t0`. A sample that cannot be read from every responder is left out.
pub fn spawn_sampler(
    addrs: Vec<SocketAddr>,
    t0: Instant,
    times: Vec<f64>,
    who: Option<crate::cpu::Who>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        'sample: for t in times {
            tokio::time::sleep_until((t0 + Duration::from_secs_f64(t)).into()).await;
            let mut counters = Counters::default();
            for addr in &addrs {
                match fetch(*addr).await {
                    Ok(c) => counters.add(&c),
                    Err(e) => {
                        eprintln!("metrics: {e:#}");
                        continue 'sample;
                    }
                }
            }
            let machine = who.as_ref().map(crate::cpu::snapshot);
            samples.push(Sample {
                at: t0.elapsed().as_secs_f64(),
                counters,
                cpu: crate::gen::process_cpu_seconds(),
                machine,
            });
        }
        samples
    })
}

pub fn nearest(samples: &[Sample], t: f64) -> Option<&Sample> {
    samples.iter().min_by(|a, b| (a.at - t).abs().total_cmp(&(b.at - t).abs()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_series() {
        let text = "# TYPE jitocsp_signatures_total counter\n\
            jitocsp_signatures_total{issuer=\"a\"} 3\n\
            jitocsp_signatures_total{issuer=\"b\"} 4\n\
            jitocsp_signatures_total_other 100\n\
            jitocsp_cache_lookups_total{result=\"hit\",tier=\"redis\"} 8\n\
            jitocsp_cache_lookups_total{result=\"miss\",tier=\"redis\"} 2\n\
            jitocsp_cache_lookups_total{result=\"hit\",tier=\"local\"} 50\n\
            jitocsp_requests_total{method=\"GET\",outcome=\"tryLater\"} 5\n\
            jitocsp_requests_total{method=\"GET\",outcome=\"successful\"} 95\n\
            jitocsp_db_reads_total 2\n";
        let c = parse(text);
        assert_eq!((c.signatures, c.db_reads, c.redis_hits, c.redis_lookups), (7.0, 2.0, 8.0, 10.0));
        assert_eq!((c.requests, c.try_later, c.successful, c.local_hits), (100.0, 5.0, 95.0, 50.0));
    }
}

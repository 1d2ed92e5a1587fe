//! One measured run of one side (jitocsp or a reference): the closed-loop load from
//! [`crate::closed`], the responder's counters before and after, and how much of the machine
//! other processes used meanwhile. Plus the check made before any measurement: sampled
//! answers fetched and verified in full.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::procs::{self, Server};
use crate::closed::{self, Pick, RunStats};
use crate::corpus::{HashAlg, Status};
use crate::cpu::MachineTicks;
use crate::gen::{self, Ctx};
use crate::scrape::{self, Counters};
use crate::verify::{judge, Verdict};

/// Starts a fresh server before each run (openssl ocsp) and returns it with its pid.
pub type Fresh = Box<dyn FnMut() -> anyhow::Result<Server> + Send>;

/// One side of a figure.
pub struct Side {
    /// `jitocsp`, `nginx` or `openssl-ocsp`.
    pub name: &'static str,
    pub ctx: Arc<Ctx>,
    /// jitocsp's metrics listener: counters are compared before and after each run.
    pub metrics: Option<SocketAddr>,
    /// Processes doing this side's work (with their children), not counted as "other" CPU.
    pub pids: Vec<u32>,
    pub fresh: Option<Fresh>,
}

/// jitocsp's counters over one run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CounterDeltas {
    pub signatures: f64,
    pub db_reads: f64,
    pub redis_hits: f64,
    pub local_hits: f64,
    pub requests: f64,
    pub successful: f64,
    pub signer_overloaded: f64,
    pub redis_errors: f64,
    pub db_errors: f64,
}

impl CounterDeltas {
    fn between(a: &Counters, b: &Counters) -> CounterDeltas {
        CounterDeltas {
            signatures: b.signatures - a.signatures,
            db_reads: b.db_reads - a.db_reads,
            redis_hits: b.redis_hits - a.redis_hits,
            local_hits: b.local_hits - a.local_hits,
            requests: b.requests - a.requests,
            successful: b.successful - a.successful,
            signer_overloaded: b.signer_overloaded - a.signer_overloaded,
            redis_errors: b.redis_errors - a.redis_errors,
            db_errors: b.db_errors - a.db_errors,
        }
    }
}

/// One recorded run.
#[derive(Clone, Debug, Serialize)]
pub struct RunRecord {
    pub figure: String,
    /// `subject` (jitocsp) or `reference`.
    pub role: &'static str,
    pub name: &'static str,
    pub run: usize,
    #[serde(flatten)]
    pub stats: RunStats,
    /// Share of all CPU time used by processes other than the generator and this side's.
    pub other_cpu_pct: f64,
    /// CPU time this side's server processes used per answer, in microseconds: steadier than
    /// the rate on a shared machine, where the share of the cores a run gets varies.
    pub server_us_per_answer: f64,
    pub counters: Option<CounterDeltas>,
}

impl Side {
    /// One closed-loop run of `duration`; `run` 0 is the unrecorded warm-up.
    pub async fn run(
        &mut self,
        figure: &str,
        role: &'static str,
        run: usize,
        connections: usize,
        duration: Duration,
        pick: Arc<Pick>,
    ) -> anyhow::Result<RunRecord> {
        let server = match &mut self.fresh {
            Some(start) => Some(tokio::task::block_in_place(start)?),
            None => None,
        };
        let mut pids = self.pids.clone();
        pids.extend(server.as_ref().map(Server::pid));
        let before = self.counters().await?;
        let cpu0 = CpuSample::take(&pids);
        let stats = closed::run_for(&self.ctx, connections, duration, pick, u64::MAX).await;
        let cpu1 = CpuSample::take(&pids);
        let after = self.counters().await?;
        drop(server);
        let counters = before.zip(after).map(|(a, b)| CounterDeltas::between(&a, &b));
        Ok(RunRecord {
            figure: figure.to_owned(),
            role,
            name: self.name,
            run,
            other_cpu_pct: cpu0.other_pct(&cpu1),
            server_us_per_answer: cpu0.server_us_per_answer(&cpu1, stats.answered_total),
            stats,
            counters,
        })
    }

    async fn counters(&self) -> anyhow::Result<Option<Counters>> {
        match self.metrics {
            Some(addr) => Ok(Some(scrape::fetch(addr).await?)),
            None => Ok(None),
        }
    }
}

/// One wrk run against `side`'s server, GET `path` (the client check), recorded as a run of
/// `figure` named `wrk`.
pub fn wrk_run(
    side: &Side,
    figure: &str,
    run: usize,
    path: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<RunRecord> {
    let cpu0 = CpuSample::take(&side.pids);
    let stats = super::wrk::run(side.ctx.targets[0].addr, path, threads, connections, duration)?;
    let cpu1 = CpuSample::take(&side.pids);
    Ok(RunRecord {
        figure: figure.to_owned(),
        role: "reference",
        name: "wrk",
        run,
        other_cpu_pct: cpu0.other_pct(&cpu1),
        server_us_per_answer: cpu0.server_us_per_answer(&cpu1, stats.answered_total),
        stats,
        counters: None,
    })
}

/// A verified answer's sizes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Sizes {
    pub body: usize,
    /// Status line and headers (of an HTTP/1.0 exchange).
    pub head: usize,
}

/// Fetches certificates `indices` from `addr` one by one and checks each answer in full
/// (structure, CertID echo, status good, times, signature against the CA key). Returns a
/// body of the median size and the median sizes: what every measured answer must weigh.
pub fn verify_sample(ctx: &Ctx, addr: SocketAddr, indices: &[u64]) -> anyhow::Result<(Vec<u8>, Sizes)> {
    let issuer = &ctx.corpus.issuers[0];
    let mut answers = Vec::new();
    for &index in indices {
        let ask = issuer.request(index, HashAlg::Sha1);
        let path = gen::get_path(ctx.prefix(), &ask.der);
        let (status, head, body) =
            procs::http_get(addr, &path).map_err(|e| anyhow::anyhow!("GET {path} from {addr}: {e}"))?;
        if status != 200 {
            bail!("GET {path} from {addr}: HTTP {status}");
        }
        match judge(&body, &ask.cert_id, Status::Good, &gen::now_generalized(), Some(&issuer.key)) {
            Verdict::Ok(Status::Good) => answers.push((body, head)),
            other => bail!("the answer from {addr} about certificate {index} does not verify: {other:?}"),
        }
    }
    answers.sort_by_key(|(body, _)| body.len());
    let mut heads: Vec<usize> = answers.iter().map(|(_, h)| *h).collect();
    heads.sort_unstable();
    let (body, _) = answers.swap_remove(answers.len() / 2);
    let sizes = Sizes { body: body.len(), head: heads[heads.len() / 2] };
    Ok((body, sizes))
}

/// CPU time from /proc, in clock ticks: all CPUs' busy and total time, the server's (the
/// given pids and their children), and ours (that and this process).
struct CpuSample {
    machine: MachineTicks,
    server: u64,
    ours: u64,
}

impl CpuSample {
    fn take(pids: &[u32]) -> CpuSample {
        let machine = MachineTicks::now();
        let mut server_pids = pids.to_vec();
        server_pids.extend(procs::children_of(pids));
        let server = server_pids.iter().map(|pid| gen::cpu_ticks(&pid.to_string())).sum::<u64>();
        // Children we have waited for (wrk) did our work too.
        let ours = server + gen::cpu_ticks("self") + gen::stat_fields("self", &[13, 14]);
        CpuSample { machine, server, ours }
    }

    fn server_us_per_answer(&self, later: &CpuSample, answers: u64) -> f64 {
        let ticks = later.server.saturating_sub(self.server);
        if answers == 0 {
            0.0
        } else {
            ticks as f64 * 1e6 / gen::CLOCK_TICKS_PER_SECOND / answers as f64
        }
    }

    fn other_pct(&self, later: &CpuSample) -> f64 {
        let total = later.machine.total.saturating_sub(self.machine.total);
        let busy = later.machine.busy.saturating_sub(self.machine.busy);
        let ours = later.ours.saturating_sub(self.ours);
        if total == 0 {
            0.0
        } else {
            100.0 * busy.saturating_sub(ours) as f64 / total as f64
        }
    }
}

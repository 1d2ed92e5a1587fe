//! The command line: subcommands and the option groups they share.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::corpus::Corpus;
use crate::gen::Target;

#[derive(Parser)]
#[command(
    name = "jitocsp-loadtest",
    version,
    about = "Load generator for jitocsp: seed, cache-drop, capacity, bench, mass-revoke"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Fill Postgres with synthetic certificates for issuers already added with `jitocsp admin issuer add`.
    Seed {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
        /// Delete the issuers' existing certificates first.
        #[arg(long)]
        replace: bool,
        /// Do nothing for an issuer that already has exactly --count certificates.
        #[arg(long)]
        skip_if_same_count: bool,
    },
    /// Print the GET path (`/` + base64 request) asking about certificate --index of the first issuer.
    PrintPath {
        #[command(flatten)]
        corpus: CorpusArgs,
        #[arg(long, default_value_t = 0)]
        index: u64,
    },
    /// Create the database named in DATABASE_URL if it does not exist.
    CreateDatabase {
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: String,
    },
    /// Replay a CDN cache drop: 1/16, 1/8, 1/4, 1/2 and all of the traffic reach the origin.
    CacheDrop(Box<CacheDropArgs>),
    /// Closed-loop capacity: every connection sends its next request as soon as it has an answer.
    Capacity(Box<CapacityArgs>),
    /// Measure jitocsp against references in the same run (hot vs nginx, cold vs openssl
    /// ocsp, signatures vs the raw signer): what scripts/bench.sh runs.
    Bench(Box<crate::bench::BenchArgs>),
    /// Replay a mass revocation: import, serve a hot set under load, revoke many certificates
    /// in one command, report the revoke time, the responder's RSS, the hot path's latency
    /// during it, the CDN hook's calls, and verify revoked answers: what loadtest/mass-revoke.sh runs.
    MassRevoke(Box<crate::mass_revoke::MassRevokeArgs>),
    /// Check a report.json: every step present with its figures, every answer verified.
    CheckReport {
        report: PathBuf,
        #[arg(long)]
        steps: usize,
        #[arg(long, default_value_t = 0.999)]
        min_success: f64,
    },
}

/// The jitocsp a subcommand starts and measures itself (`bench`, `mass-revoke`), and where
/// it writes.
#[derive(Args, Clone)]
pub struct RunArgs {
    /// NAME=CA_CERT: an issuer made for this run, already added to jitocsp with its key as
    /// signer.
    #[arg(long)]
    pub issuer: String,
    /// The jitocsp binary to run (release).
    #[arg(long)]
    pub jitocsp: PathBuf,
    /// Logs and working files go here.
    #[arg(long)]
    pub work: PathBuf,
    /// report.txt and report.json go here.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: String,
    /// jitocsp's Redis key prefix (the caller unlinks the keys afterwards).
    #[arg(long)]
    pub key_prefix: String,
}

#[derive(Args, Clone)]
pub struct CorpusArgs {
    /// NAME=CA_CERT: an issuer's name in jitocsp and its CA certificate (PEM or DER). Repeatable.
    #[arg(long = "issuer")]
    pub issuers: Vec<String>,
    /// Certificates per issuer.
    #[arg(long, default_value_t = 20_000)]
    pub count: u64,
    /// Share of the certificates that are revoked.
    #[arg(long, default_value_t = 0.05)]
    pub revoked_share: f64,
    /// Fixes serials and statuses: seed and load must use the same value.
    #[arg(long, default_value_t = 1)]
    pub corpus_seed: u64,
}

#[derive(Args, Clone)]
pub struct LoadArgs {
    /// Where requests go: http://HOST:PORT[/prefix] (loopback only unless --allow-remote).
    /// Repeat it to load several origins (a fleet without its load balancer): connections are
    /// spread over them in turn, and the report has per-origin figures. Required, except by
    /// `cache-drop --find-max`, which starts the responders it loads.
    #[arg(long = "target")]
    pub targets: Vec<String>,
    /// The responder's metrics listener, http://HOST:PORT (read for Redis hits, signatures/s,
    /// Postgres reads/s). Repeat it for several origins: their counters are summed.
    #[arg(long = "metrics")]
    pub metrics: Vec<String>,
    #[arg(long)]
    pub allow_remote: bool,
    /// Keep-alive connections (each carries one request at a time).
    #[arg(long, default_value_t = 128)]
    pub connections: usize,
    /// Generator threads, each with its own runtime and share of the connections (the
    /// open-loop scheduler has one more of its own).
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Zipf exponent of certificate popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Share of requests sent as POST (the rest are GET).
    #[arg(long, default_value_t = 0.0)]
    pub post_share: f64,
    /// Share of requests with SHA-256 CertIDs (the rest SHA-1).
    #[arg(long, default_value_t = 0.0)]
    pub sha256_share: f64,
    /// Check the signature of the first 1000 answers and of one in N after that (every answer's
    /// structure, CertID, status and times are always checked).
    #[arg(long, default_value_t = 64)]
    pub verify_every: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Mode {
    Origin,
    Cdn,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
pub enum Arrival {
    Constant,
    Poisson,
}

#[derive(Args)]
pub struct CacheDropArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, value_enum)]
    pub mode: Mode,
    /// Full traffic F (requests/s): origin mode offers F x fraction at each step; cdn mode
    /// offers F to the CDN throughout and purges that fraction of its cache at each step.
    /// With --find-max, the rates tried are chosen by the bisection.
    #[arg(long, required_unless_present = "find_max", conflicts_with = "find_max")]
    pub full_rate: Option<f64>,
    /// Seconds per step [default: 10; 6 with --find-max].
    #[arg(long)]
    pub step_seconds: Option<f64>,
    #[arg(long, default_value = "1/16,1/8,1/4,1/2,1")]
    pub fractions: String,
    /// Arrival process [default: constant; poisson with --find-max].
    #[arg(long, value_enum)]
    pub arrival: Option<Arrival>,
    /// Before the steps, request each of the first --warm-count certificates once through the
    /// target (origin mode: a warm Redis; cdn mode always warms the CDN).
    #[arg(long)]
    pub warm: bool,
    #[arg(long)]
    pub warm_count: Option<u64>,
    /// cdn mode: after warming the CDN, unlink the responder's Redis keys (--redis-url,
    /// --key-prefix), so that every URL a step purges costs the origin a signature (start the
    /// responder without a local tier).
    #[arg(long)]
    pub unlink_after_warm: bool,
    /// What to call the responder's Redis in the report (the script starts jitocsp with a fresh
    /// key prefix for a cold one).
    #[arg(long)]
    pub redis_label: Option<String>,
    /// cdn mode: the nginx proxy_cache_path directory and its levels.
    #[arg(long)]
    pub nginx_cache_dir: Option<PathBuf>,
    #[arg(long, default_value = "1:2")]
    pub nginx_levels: String,
    #[arg(long)]
    pub out: PathBuf,
    /// Refuse schedules of more requests than this.
    #[arg(long, default_value_t = 50_000_000)]
    pub max_requests: u64,
    /// Refuse schedules longer than this many seconds.
    #[arg(long, default_value_t = 3600.0)]
    pub max_seconds: f64,
    /// Seed of the request sequence.
    #[arg(long, default_value_t = 7)]
    pub request_seed: u64,
    /// The responders' process ids (repeat for several): each step's CPU breakdown names
    /// their share (with the Postgres backends of --database-url's database and the Redis of
    /// --redis-url).
    #[arg(long = "responder-pid")]
    pub responder_pids: Vec<u32>,
    #[command(flatten)]
    pub find_max: crate::cache_drop::find_max::FindMaxArgs,
}

impl CacheDropArgs {
    pub fn step_seconds(&self) -> f64 {
        self.step_seconds.unwrap_or(if self.find_max.find_max { 6.0 } else { 10.0 })
    }

    pub fn arrival(&self) -> Arrival {
        self.arrival.unwrap_or(if self.find_max.find_max { Arrival::Poisson } else { Arrival::Constant })
    }
}

#[derive(Args)]
pub struct CapacityArgs {
    #[command(flatten)]
    pub corpus: CorpusArgs,
    #[command(flatten)]
    pub load: LoadArgs,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Load a static file at this path (expects HTTP 200 and --static-len bytes) instead of OCSP.
    #[arg(long)]
    pub static_path: Option<String>,
    #[arg(long)]
    pub static_len: Option<usize>,
    /// OCSP: warm the first K certificates, then ask about them uniformly (the hot path).
    #[arg(long, default_value_t = 1000)]
    pub hot_set: u64,
    /// Label in the output.
    #[arg(long, default_value = "capacity")]
    pub label: String,
    /// Append the result as one JSON line to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

pub fn load_corpus(a: &CorpusArgs) -> anyhow::Result<Corpus> {
    Corpus::load(&a.issuers, a.count, a.revoked_share, a.corpus_seed)
}

pub fn parse_fraction(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let value = match t.split_once('/') {
        Some((a, b)) => a.trim().parse::<f64>()? / b.trim().parse::<f64>()?,
        None => t.parse::<f64>()?,
    };
    if !(value > 0.0 && value <= 1.0) {
        bail!("fraction {t:?} is not in (0, 1]");
    }
    Ok(value)
}

pub fn check_shares(load: &LoadArgs) -> anyhow::Result<()> {
    for (name, v) in [("--post-share", load.post_share), ("--sha256-share", load.sha256_share)] {
        if !(0.0..=1.0).contains(&v) {
            bail!("{name} must be between 0 and 1");
        }
    }
    if load.connections == 0 || load.connections > 10_000 {
        bail!("--connections must be between 1 and 10000");
    }
    Ok(())
}

/// Every `--target`, parsed (at least one); they must share one path prefix.
pub fn targets(load: &LoadArgs) -> anyhow::Result<Vec<Target>> {
    if load.targets.is_empty() {
        bail!("--target is required");
    }
    let targets =
        load.targets.iter().map(|t| Target::parse(t, load.allow_remote)).collect::<anyhow::Result<Vec<_>>>()?;
    if targets.iter().any(|t| t.prefix != targets[0].prefix) {
        bail!("every --target must have the same path prefix");
    }
    Ok(targets)
}

pub fn metrics_addrs(load: &LoadArgs) -> anyhow::Result<Vec<SocketAddr>> {
    load.metrics.iter().map(|m| Target::parse(m, load.allow_remote).map(|t| t.addr)).collect()
}

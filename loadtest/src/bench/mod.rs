//! `bench`: jitocsp beside a reference measured in the same run, with the same client
//! (/work/shared/PERFORMANCE.md, docs/benchmarks.md). scripts/bench.sh prepares the CA, the
//! issuer and the services and calls this; this seeds the certificates, starts and stops the
//! servers, verifies sampled answers, measures and writes the report.
//!
//! Figures, in order: `hot` (jitocsp answering from Redis, local tier off) and `hot-local`
//! (local tier on), both against nginx serving one real response as a static file;
//! `cold` (every request a new serial, `Connection: close`) against `openssl ocsp`;
//! `signatures` (cold with keep-alive) against the raw rate of jitocsp's signer.
//! Each figure: an unrecorded warm-up of each side, then `--runs` runs alternating which side
//! goes first, closed loop over `--connections` connections.

pub(crate) mod measure;
pub(crate) mod procs;
mod report;
mod speed;
mod wrk;

use std::io::Write as _;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use self::measure::{RunRecord, Side, Sizes};
use self::procs::JitocspSpec;
use crate::closed::{self, Pick};
use crate::corpus::Corpus;
use crate::gen::{Check, Ctx, Target};

#[derive(clap::Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub run: crate::cli::RunArgs,
    /// The CA's private key (PKCS#8 PEM): openssl ocsp signs with it, and the raw signing rate
    /// is measured with it.
    #[arg(long)]
    pub ca_key: PathBuf,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Seconds per recorded run.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Seconds of unrecorded load on each side before a figure's runs.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Label the report as a quick run.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Generator threads.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Certificates cycled on the hot path.
    #[arg(long, default_value_t = 20_000)]
    pub hot_certs: u64,
    /// Sizes the cold serial lists (requests/s x seconds); a run that exhausts its list fails.
    #[arg(long, default_value_t = 60_000)]
    pub cold_max_rate: u64,
    /// The same for openssl ocsp's index.
    #[arg(long, default_value_t = 40_000)]
    pub ref_max_rate: u64,
    /// JITOCSP_SERVER_WORKERS and nginx's worker_processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// jitocsp's signing.p256_backend, and the raw rate compared with (ring | p256).
    #[arg(long, default_value = "ring")]
    pub backend: String,
    /// Processes whose CPU counts as jitocsp's (Redis, Postgres), not as other load.
    #[arg(long = "count-as-jitocsp")]
    pub jitocsp_pids: Vec<u32>,
    /// Seconds per signing-ceiling measurement.
    #[arg(long, default_value_t = 3)]
    pub speed_seconds: u64,
    /// The commit measured, for the report.
    #[arg(long, default_value = "unknown")]
    pub git: String,
    #[arg(long, default_value_t = 1)]
    pub corpus_seed: u64,
    /// Which figures to measure, comma-separated (default: all). Certificates are seeded only
    /// for those, and the signing ceilings are measured only with `signatures`: `--figures
    /// hot,hot-local` takes a minute or two.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = FigureName::ALL)]
    pub figures: Vec<FigureName>,
}

/// The figures `bench` can measure, in the order it measures them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum FigureName {
    Hot,
    HotLocal,
    Cold,
    Signatures,
}

impl FigureName {
    const ALL: [FigureName; 4] = [FigureName::Hot, FigureName::HotLocal, FigureName::Cold, FigureName::Signatures];

    /// The name in the report (`report::FIGURES`).
    pub fn as_str(self) -> &'static str {
        match self {
            FigureName::Hot => "hot",
            FigureName::HotLocal => "hot-local",
            FigureName::Cold => "cold",
            FigureName::Signatures => "signatures",
        }
    }
}

impl BenchArgs {
    fn wants(&self, figure: FigureName) -> bool {
        self.figures.contains(&figure)
    }
}

/// Certificates verified before each figure (and before `cache-drop --find-max` serves one of
/// their answers from nginx).
pub(crate) const SAMPLE: u64 = 10;
/// ECDSA signatures vary by a byte or two in DER.
const SIZE_SLACK: usize = 8;

/// The certificate indices each part of the benchmark uses: every cold request asks about a
/// serial never asked before. Indices below `seeded` are in Postgres; openssl's are above.
struct Layout {
    hot: u64,
    cold: Walks,
    keepalive: Walks,
    reference: Walks,
    seeded: u64,
}

struct Walks {
    sample: Range<u64>,
    warm: Range<u64>,
    runs: Vec<Range<u64>>,
}

impl Walks {
    fn take(next: &mut u64, rate: u64, a: &BenchArgs) -> Walks {
        let mut take = |n: u64| {
            let r = *next..*next + n;
            *next += n;
            r
        };
        let sample = take(SAMPLE);
        let warm = take(rate * a.warmup);
        let runs = (0..a.runs).map(|_| take(rate * a.duration)).collect();
        Walks { sample, warm, runs }
    }

    fn pick(&self, run: usize) -> Arc<Pick> {
        let r = if run == 0 { &self.warm } else { &self.runs[run - 1] };
        Arc::new(Pick::walk(r.start, r.end))
    }

    fn end(&self) -> u64 {
        self.runs.last().map_or(self.warm.end, |r| r.end)
    }
}

impl Layout {
    /// Figures not measured get empty walks (their samples are still taken, but never asked).
    fn new(a: &BenchArgs) -> Layout {
        let rate = |figure, rate| if a.wants(figure) { rate } else { 0 };
        let mut next = a.hot_certs;
        let cold = Walks::take(&mut next, rate(FigureName::Cold, a.cold_max_rate), a);
        let keepalive = Walks::take(&mut next, rate(FigureName::Signatures, a.cold_max_rate), a);
        let seeded = keepalive.end();
        let reference = Walks::take(&mut next, rate(FigureName::Cold, a.ref_max_rate), a);
        Layout { hot: a.hot_certs, cold, keepalive, reference, seeded }
    }
}

pub async fn run(a: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(a.runs >= 1 && a.duration >= 1, "--runs and --duration must be at least 1");
    anyhow::ensure!(a.hot_certs >= SAMPLE, "--hot-certs must be at least {SAMPLE}");
    let layout = Layout::new(&a);
    let corpus = Arc::new(Corpus::load(std::slice::from_ref(&a.run.issuer), layout.seeded, 0.0, a.corpus_seed)?);
    std::fs::create_dir_all(&a.run.work)?;
    let load_average_start = crate::report::load_average();
    eprintln!("bench: seeding {} certificates", layout.seeded);
    let started = Instant::now();
    crate::seed::seed(&a.run.database_url, &corpus, true, false).await?;
    let seed_seconds = started.elapsed().as_secs_f64();
    write_openssl_index(&a, &corpus, &layout.reference)?;

    let mut bench = Bench { a: &a, corpus, layout: &layout, records: Vec::new() };
    let (jitocsp, nginx, openssl) = bench.figures().await?;
    // The ceilings are the signatures figure's reference, and take half a minute.
    let ceilings = if a.wants(FigureName::Signatures) {
        eprintln!("bench: signing ceilings ({} s each)", a.speed_seconds);
        let key = std::fs::read(&a.ca_key).with_context(|| format!("reading {}", a.ca_key.display()))?;
        speed::backend(&a.backend)?;
        tokio::task::block_in_place(|| speed::ceilings(&key, a.speed_seconds))?
    } else {
        Vec::new()
    };

    let meta = report::Meta {
        stamp: chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string(),
        quick: a.quick,
        runs: a.runs,
        duration_s: a.duration,
        warmup_s: a.warmup,
        connections: a.connections,
        generator_threads: a.threads,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        git: a.git.clone(),
        workers: a.workers,
        backend: a.backend.clone(),
        hot_certs: a.hot_certs,
        seeded: layout.seeded,
        seed_seconds,
        jitocsp,
        nginx,
        openssl,
        nginx_version: version("nginx", &["-v"]),
        openssl_version: version("openssl", &["version"]),
        load_average_start,
        load_average_end: crate::report::load_average(),
        figures: a.figures.iter().map(|f| f.as_str()).collect(),
    };
    let report = report::BenchReport::new(meta, bench.records, ceilings, Vec::new());
    let text = report.text();
    crate::report::write_json_and_text(&a.run.out, &report, &text)?;
    print!("{text}");
    if !report.ok {
        bail!("something did not work (PROBLEM lines above)");
    }
    Ok(())
}

struct Bench<'a> {
    a: &'a BenchArgs,
    corpus: Arc<Corpus>,
    layout: &'a Layout,
    records: Vec<RunRecord>,
}

impl Bench<'_> {
    fn ctx(&self, addr: SocketAddr, close: bool, check: Check) -> Arc<Ctx> {
        let mut ctx = Ctx::new(Target::at(addr), self.corpus.clone(), self.a.threads);
        (ctx.close, ctx.check) = (close, check);
        Arc::new(ctx)
    }

    fn size_check(sizes: Sizes) -> Check {
        Check::Size { len: sizes.body, slack: SIZE_SLACK }
    }

    /// Starts jitocsp with `local_entries`, requests `warm` once each, verifies `sample`.
    async fn jitocsp(&self, tag: &str, local_entries: usize, warm: u64, sample: Range<u64>) -> anyhow::Result<Jitocsp> {
        let a = self.a;
        let spec = JitocspSpec { run: &a.run, workers: a.workers, backend: &a.backend, env: &[] };
        let (server, listen, metrics) = tokio::task::block_in_place(|| procs::jitocsp(&spec, tag, local_entries))?;
        let full = self.ctx(listen, false, Check::Full);
        if warm > 0 {
            let w = closed::each_once(&full, 64, closed::warm_list(&self.corpus, warm, false), None).await;
            eprintln!("bench: {tag}: warmed {} certificates in {:.1} s", w.requests, w.seconds);
            anyhow::ensure!(w.failed == 0, "{tag}: {} of the warm-up requests failed", w.failed);
        }
        let indices: Vec<u64> = sample.collect();
        let (response, sizes) = tokio::task::block_in_place(|| measure::verify_sample(&full, listen, &indices))?;
        eprintln!("bench: {tag}: {} answers verified (signature, CertID, status good, times)", indices.len());
        let mut pids = vec![server.pid()];
        pids.extend(&self.a.jitocsp_pids);
        Ok(Jitocsp { server, listen, metrics, pids, response, sizes })
    }

    fn jitocsp_side(&self, j: &Jitocsp, close: bool) -> Side {
        Side {
            name: "jitocsp",
            ctx: self.ctx(j.listen, close, Self::size_check(j.sizes)),
            metrics: Some(j.metrics),
            pids: j.pids.clone(),
            fresh: None,
        }
    }

    /// Runs both sides of a figure: warm-ups, then runs alternating which side goes first.
    async fn figure(
        &mut self,
        figure: &str,
        subject: &mut Side,
        mut reference: Option<&mut Side>,
        pick: impl Fn(&str, usize) -> Arc<Pick>,
    ) -> anyhow::Result<()> {
        let (a, conns) = (self.a, self.a.connections);
        eprintln!("bench: {figure}: warm-up {} s each, then {} x {} s", a.warmup, a.runs, a.duration);
        let (warmup, duration) = (Duration::from_secs(a.warmup), Duration::from_secs(a.duration));
        if let Some(r) = reference.as_deref_mut() {
            r.run(figure, "reference", 0, conns, warmup, pick("reference", 0)).await?;
        }
        subject.run(figure, "subject", 0, conns, warmup, pick("subject", 0)).await?;
        for run in 1..=a.runs {
            let mut sides: Vec<(&mut Side, &'static str)> = vec![(&mut *subject, "subject")];
            if let Some(r) = reference.as_deref_mut() {
                sides.insert(if run % 2 == 1 { 0 } else { 1 }, (r, "reference"));
            }
            for (side, role) in sides {
                let record = side.run(figure, role, run, conns, duration, pick(role, run)).await?;
                eprintln!("bench:   {figure} {} run {run}: {:.0} answers/s", record.name, record.stats.rps);
                self.records.push(record);
            }
        }
        Ok(())
    }

    /// Every figure asked for; returns the verified answers' sizes (jitocsp, nginx, openssl
    /// ocsp; zero for a side not run).
    async fn figures(&mut self) -> anyhow::Result<(Sizes, Sizes, Sizes)> {
        let (a, layout) = (self.a, self.layout);
        let (mut jitocsp_sizes, mut nginx_sizes, mut openssl_sizes) = (None, Sizes::default(), Sizes::default());
        let hot_sample = 0..SAMPLE;
        let cycle = Arc::new(Pick::Cycle { count: layout.hot });
        // nginx serves the first hot jitocsp's verified answer to both hot figures.
        let mut nginx: Option<(procs::Server, Side)> = None;
        for (figure, local_entries) in [(FigureName::Hot, 0), (FigureName::HotLocal, 100_000)] {
            if !a.wants(figure) {
                continue;
            }
            let mut j = self.jitocsp(figure.as_str(), local_entries, layout.hot, hot_sample.clone()).await?;
            if nginx.is_none() {
                let (server, side, sizes) = self.nginx(&j)?;
                nginx = Some((server, side));
                nginx_sizes = sizes;
            }
            let Some((_, nginx_side)) = nginx.as_mut() else { bail!("nginx was not started") };
            let mut subject = self.jitocsp_side(&j, false);
            self.figure(figure.as_str(), &mut subject, Some(&mut *nginx_side), |_, _| cycle.clone()).await?;
            check_alive(&mut j.server)?;
            jitocsp_sizes = Some(j.sizes);
            drop(j);
            if figure == FigureName::Hot {
                self.client_check(nginx_side, &cycle).await?;
            }
        }
        drop(nginx);
        if !a.wants(FigureName::Cold) && !a.wants(FigureName::Signatures) {
            return Ok((jitocsp_sizes.unwrap_or_default(), nginx_sizes, openssl_sizes));
        }

        let mut j = self.jitocsp("cold", 0, 0, layout.cold.sample.clone()).await?;
        if a.wants(FigureName::Cold) {
            let (openssl_addr, sizes) = self.openssl_sample()?;
            openssl_sizes = sizes;
            let mut openssl = Side {
                name: "openssl-ocsp",
                ctx: self.ctx(openssl_addr, true, Self::size_check(openssl_sizes)),
                metrics: None,
                pids: Vec::new(),
                fresh: Some(self.openssl_starter(openssl_addr)),
            };
            let mut subject = self.jitocsp_side(&j, true);
            self.figure("cold", &mut subject, Some(&mut openssl), |role, run| match role {
                "reference" => layout.reference.pick(run),
                _ => layout.cold.pick(run),
            })
            .await?;
        }

        if a.wants(FigureName::Signatures) {
            let indices: Vec<u64> = layout.keepalive.sample.clone().collect();
            let ctx = self.ctx(j.listen, false, Check::Full);
            tokio::task::block_in_place(|| measure::verify_sample(&ctx, j.listen, &indices))?;
            let mut subject = self.jitocsp_side(&j, false);
            self.figure("signatures", &mut subject, None, |_, run| layout.keepalive.pick(run)).await?;
        }
        check_alive(&mut j.server)?;
        Ok((jitocsp_sizes.unwrap_or(j.sizes), nginx_sizes, openssl_sizes))
    }

    /// Starts nginx serving `j`'s verified answer as a static file, and checks that it does.
    fn nginx(&self, j: &Jitocsp) -> anyhow::Result<(procs::Server, Side, Sizes)> {
        let (server, addr) =
            tokio::task::block_in_place(|| procs::nginx(&self.a.run.work, self.a.workers, &j.response))?;
        let (status, head, body) = procs::http_get(addr, "/x")?;
        anyhow::ensure!(status == 200 && body == j.response, "nginx does not serve the response file");
        let sizes = Sizes { body: body.len(), head };
        let side = Side {
            name: "nginx",
            ctx: self.ctx(addr, false, Self::size_check(sizes)),
            metrics: None,
            pids: vec![server.pid()],
            fresh: None,
        };
        Ok((server, side, sizes))
    }

    /// The generator and wrk against the hot reference's nginx, alternating: whether the
    /// generator, rather than the servers, sets the hot rates (docs/benchmarks.md, "The client").
    async fn client_check(&mut self, nginx: &mut Side, cycle: &Arc<Pick>) -> anyhow::Result<()> {
        let a = self.a;
        if !wrk::available() {
            eprintln!("bench: client check skipped: wrk is not installed");
            return Ok(());
        }
        eprintln!("bench: client check: this generator and wrk against nginx, {} x {} s each", a.runs, a.duration);
        let duration = Duration::from_secs(a.duration);
        let path = self.path(0);
        for run in 1..=a.runs {
            for generator_first in [run % 2 == 1, run % 2 == 0] {
                let record = if generator_first {
                    let mut r = nginx.run("client", "subject", run, a.connections, duration, cycle.clone()).await?;
                    r.name = "generator";
                    r
                } else {
                    let (threads, connections) = (a.threads, a.connections);
                    tokio::task::block_in_place(|| {
                        measure::wrk_run(nginx, "client", run, &path, threads, connections, duration)
                    })?
                };
                eprintln!("bench:   client {} run {run}: {:.0} answers/s", record.name, record.stats.rps);
                self.records.push(record);
            }
        }
        Ok(())
    }

    fn openssl_starter(&self, addr: SocketAddr) -> measure::Fresh {
        let a = self.a;
        let (work, ca, key) = (a.run.work.clone(), self.ca_path(), a.ca_key.clone());
        let probe = self.path(self.layout.reference.sample.start);
        Box::new(move || procs::openssl_ocsp(&work, addr, &ca, &key, &probe))
    }

    /// Starts openssl ocsp once to verify its sampled answers and learn their size.
    fn openssl_sample(&self) -> anyhow::Result<(SocketAddr, Sizes)> {
        let addr = procs::free_addr()?;
        let server = tokio::task::block_in_place(|| (self.openssl_starter(addr))())?;
        let ctx = self.ctx(addr, true, Check::Full);
        let indices: Vec<u64> = self.layout.reference.sample.clone().collect();
        let (_, sizes) = tokio::task::block_in_place(|| measure::verify_sample(&ctx, addr, &indices))?;
        eprintln!("bench: openssl ocsp: {} answers verified", indices.len());
        drop(server);
        Ok((addr, sizes))
    }

    fn ca_path(&self) -> PathBuf {
        PathBuf::from(self.a.run.issuer.split_once('=').map_or("", |(_, p)| p))
    }

    fn path(&self, index: u64) -> String {
        crate::gen::get_path("", &self.corpus.issuers[0].request(index, crate::corpus::HashAlg::Sha1).der)
    }
}

/// A running jitocsp and what was learnt starting it.
struct Jitocsp {
    server: procs::Server,
    listen: SocketAddr,
    metrics: SocketAddr,
    pids: Vec<u32>,
    /// A verified answer of the median size (nginx serves it as the reference).
    response: Vec<u8>,
    sizes: Sizes,
}

fn check_alive(server: &mut procs::Server) -> anyhow::Result<()> {
    anyhow::ensure!(server.alive(), "{} died during the runs", server.name);
    Ok(())
}

/// openssl's CA database: a "V" line for each of its serials, valid for 30 days.
fn write_openssl_index(a: &BenchArgs, corpus: &Corpus, walks: &Walks) -> anyhow::Result<()> {
    let not_after = (chrono::Utc::now() + chrono::TimeDelta::days(30)).format("%y%m%d%H%M%SZ").to_string();
    let path = a.run.work.join("index.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&path)?);
    let issuer = &corpus.issuers[0];
    for index in walks.sample.start..walks.end() {
        let hex: String = issuer.serial(index).iter().map(|b| format!("{b:02X}")).collect();
        writeln!(out, "V\t{not_after}\t\t{hex}\tunknown\t/CN=bench {hex}")?;
    }
    out.flush().with_context(|| format!("writing {}", path.display()))
}

/// The first line a tool prints about its version (nginx prints to stderr).
fn version(tool: &str, args: &[&str]) -> String {
    std::process::Command::new(tool)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() { o.stderr } else { o.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").replace("nginx version: ", "")
        })
        .unwrap_or_else(|_| format!("{tool} (version unknown)"))
}

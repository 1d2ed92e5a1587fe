//! jitocsp-loadtest: seeds synthetic certificates, replays a CDN cache drop against jitocsp
//! (directly, or through an nginx playing the CDN), measures capacity, and runs the benchmark
//! (jitocsp beside its references in the same run) and the mass-revocation scenario. See
//! loadtest/README.md and docs/benchmarks.md.
//!
//! Reading order: [`cli`] (the subcommands), [`corpus`] (what is asked), [`schedule`] (when it
//! is asked), [`gen`] (how requests are sent and answers recorded), [`verify`] (how answers
//! are checked), then a subcommand: [`cache_drop`], [`capacity`], [`bench`](mod@bench),
//! [`mass_revoke`].

mod bench;
mod cache_drop;
mod capacity;
mod cdn;
mod cli;
mod closed;
mod corpus;
mod cpu;
mod gen;
mod mass_revoke;
mod report;
mod schedule;
mod scrape;
mod seed;
mod verify;
mod wire;

use std::time::Duration;

use clap::Parser as _;

use crate::cli::{Cli, Command};
use crate::corpus::HashAlg;

fn main() {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::CacheDrop(a) => a.load.threads,
        Command::Capacity(a) => a.load.threads,
        Command::Bench(a) => a.threads,
        Command::MassRevoke(a) => a.threads,
        _ => 1,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Seed { corpus, database_url, replace, skip_if_same_count } => {
                let corpus = cli::load_corpus(&corpus)?;
                seed::seed(&database_url, &corpus, replace, skip_if_same_count).await
            }
            Command::PrintPath { corpus, index } => {
                let corpus = cli::load_corpus(&corpus)?;
                anyhow::ensure!(index < corpus.count, "--index must be below --count");
                let der = corpus.issuers[0].request(index, HashAlg::Sha1).der;
                println!("{}", gen::get_path("", &der));
                Ok(())
            }
            Command::CreateDatabase { database_url } => seed::create_database(&database_url).await,
            Command::CacheDrop(args) => cache_drop::run(*args).await,
            Command::Capacity(args) => capacity::run(*args).await,
            Command::Bench(args) => bench::run(*args).await,
            Command::MassRevoke(args) => mass_revoke::run(*args).await,
            Command::CheckReport { report, steps, min_success } => {
                println!("{}", report::check(&report, steps, min_success)?);
                Ok(())
            }
        }
    });
    runtime.shutdown_timeout(Duration::from_secs(1));
    if let Err(e) = result {
        eprintln!("jitocsp-loadtest: error: {e:#}");
        std::process::exit(1);
    }
}

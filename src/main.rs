//! The `jitocsp` binary: argument parsing, logging set-up and exit codes. Everything else is
//! in the library (see `src/lib.rs` for the map).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use jitocsp::admin::AdminCommand;
use jitocsp::config::{Config, Flag, LogFormat};
use tracing_subscriber::EnvFilter;

/// The request path allocates small, short-lived buffers (request decoding, header values);
/// mimalloc's thread-local free lists serve them faster than glibc's allocator, which showed
/// up at ~9% of the hot path's CPU in profiles.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A just-in-time OCSP responder: Postgres holds the status of every certificate, responses
/// are signed on demand and cached in Redis.
#[derive(Parser)]
#[command(name = "jitocsp", version, about)]
struct Cli {
    /// Configuration file (TOML). Default: ./jitocsp.toml if present. Every key can also be
    /// set with JITOCSP_<SECTION>_<KEY>; DATABASE_URL and REDIS_URL are honoured.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the schema migrations in sql/ (idempotent).
    Migrate,
    /// Serve OCSP over HTTP.
    Serve {
        /// OCSP listener address (overrides server.listen).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
        /// Metrics, health and readiness listener address (overrides server.metrics_listen).
        #[arg(long, value_name = "ADDR")]
        metrics_listen: Option<String>,
    },
    /// Manage issuers and certificate status.
    #[command(subcommand)]
    Admin(AdminCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let flags = match &cli.command {
        Command::Serve { listen, metrics_listen } => {
            let flag = |key, name, value: &Option<String>| {
                value.clone().map(|value| Flag { section: "server", key, name, value })
            };
            [flag("listen", "--listen", listen), flag("metrics_listen", "--metrics-listen", metrics_listen)]
                .into_iter()
                .flatten()
                .collect()
        }
        _ => Vec::new(),
    };
    let config = match Config::load(cli.config.as_deref(), &flags) {
        Ok(config) => config,
        Err(error) => return ExitCode::from(report(&error, 2) as u8),
    };
    init_logging(&config);
    // What the file and the environment made of it, for an operator chasing a setting. The
    // Debug output shows URLs with their passwords masked (config/secrets.rs) and names the
    // secret files, never their contents.
    tracing::debug!(config = ?config, "configuration");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Command::Migrate => {
                match jitocsp::db::migrate::run(&config.database.url, &config.database.tls_files()).await {
                    Ok(applied) if applied.is_empty() => {
                        println!("schema is up to date");
                        0
                    }
                    Ok(applied) => {
                        println!("applied migrations {applied:?}");
                        0
                    }
                    Err(error) => report(&error, error.exit_code()),
                }
            }
            Command::Serve { .. } => match jitocsp::server::serve(config).await {
                Ok(()) => 0,
                Err(error) => report(&error, 1),
            },
            Command::Admin(command) => match jitocsp::admin::run(command, &config).await {
                Ok(()) => 0,
                Err(error) => report(&error, error.exit_code()),
            },
        }
    });
    ExitCode::from(code as u8)
}

/// Prints an error and its chain of causes on one line; returns the exit code. Some messages
/// already quote their cause ("postgres: {0}"), so a cause whose text is already shown is not
/// repeated.
fn report(error: &(dyn std::error::Error + 'static), code: i32) -> i32 {
    let mut message = String::new();
    for cause in anyhow::Chain::new(error) {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    eprintln!("error: {message}");
    code
}

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

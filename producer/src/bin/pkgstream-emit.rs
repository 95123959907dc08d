//! `pkgstream-emit`: the host agent. `record` takes hook events (NDJSON on
//! stdin) into the durable spool; `flush` ships the spool to Kafka; `status`
//! shows what waits. See producer/README.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pkgstream_producer::emitter::{flush, record};
use pkgstream_producer::{EmitConfig, ProducerError, Spool};

#[derive(Parser)]
#[command(
    name = "pkgstream-emit",
    version,
    about = "Record package change events into the host spool and ship them to Kafka"
)]
struct Cli {
    /// Configuration file [default: /etc/pkgstream/emit.toml if it exists].
    #[arg(long, short, env = "PKGSTREAM_EMIT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read NDJSON events from stdin (or --input) and append them durably to the spool.
    Record {
        /// Read events from this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Afterwards, start `pkgstream-emit flush` in the background and return at once.
        #[arg(long)]
        spawn_flush: bool,
    },
    /// Ship the spool to Kafka; exits 75 with everything kept if Kafka is unreachable.
    Flush {
        /// Give up after this many seconds [default: flush.timeout_secs].
        #[arg(long)]
        timeout: Option<u64>,
    },
    /// Read the whole rpmdb (`rpm -qa`) and record it as one inventory snapshot.
    Inventory {
        /// Read the rpmdb of this root instead of /.
        #[arg(long)]
        root: Option<PathBuf>,
        /// rpmdb path inside the root [default: rpm's %_dbpath].
        #[arg(long)]
        dbpath: Option<String>,
        /// Afterwards, start `pkgstream-emit flush` in the background.
        #[arg(long)]
        spawn_flush: bool,
    },
    /// Print what waits in the spool.
    Status,
}

fn main() -> ExitCode {
    init_tracing();
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pkgstream-emit: error: {e:#}");
            ExitCode::from(
                e.downcast_ref::<ProducerError>()
                    .map_or(1, ProducerError::exit_code),
            )
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if std::env::var("PKGSTREAM_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let cfg = EmitConfig::load(cli.config.as_deref())?;
    let spool = Spool::open(&cfg.spool.dir, cfg.spool_limits())?;
    match cli.command {
        Command::Record { input, spawn_flush } => {
            let report = match &input {
                Some(path) => {
                    let file = std::fs::File::open(path)
                        .with_context(|| format!("cannot open {}", path.display()))?;
                    record(
                        &cfg,
                        &spool,
                        std::io::BufReader::new(file),
                        &path.display().to_string(),
                    )?
                }
                None => record(&cfg, &spool, std::io::stdin().lock(), "stdin")?,
            };
            tracing::info!(changes = report.changes, snapshots = report.snapshots, rejected = report.rejected.len(), spool = %spool.dir().display(), "recorded");
            if spawn_flush && report.changes + report.snapshots > 0 {
                spawn_background_flush(cli.config.as_deref());
            }
            for e in &report.rejected {
                eprintln!("pkgstream-emit: rejected: {e}");
            }
            Ok(if report.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(65)
            })
        }
        Command::Flush { timeout } => {
            let timeout = Duration::from_secs(timeout.unwrap_or(cfg.flush.timeout_secs));
            let Some(_lock) = spool.try_flush_lock()? else {
                tracing::info!("another flush is running; it will ship what was recorded");
                return Ok(ExitCode::SUCCESS);
            };
            let report = flush(&cfg, &spool, timeout)?;
            tracing::info!(changes = report.changes, snapshots = report.snapshots, corrupt_bytes = report.corrupt_bytes, brokers = %cfg.kafka.brokers, "flushed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            root,
            dbpath,
            spawn_flush,
        } => {
            let line = pkgstream_producer::inventory::snapshot_line(
                root.as_deref(),
                dbpath.as_deref(),
                Duration::from_secs(120),
            )?;
            let report = record(&cfg, &spool, std::io::Cursor::new(line), "rpmdb")?;
            if let Some(e) = report.rejected.first() {
                anyhow::bail!("inventory snapshot not recorded: {e}");
            }
            tracing::info!(snapshots = report.snapshots, evicted = report.evicted_snapshots, spool = %spool.dir().display(), "inventory recorded");
            if spawn_flush {
                spawn_background_flush(cli.config.as_deref());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status => {
            let stats = spool.stats()?;
            println!("spool {}: {} bytes of change events, {} bytes of inventory snapshots, {} segment(s)", spool.dir().display(), stats.change_bytes, stats.inventory_bytes, stats.segments);
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Starts `pkgstream-emit flush` detached (own process group, no stdio), so
/// the hook returns now and the package manager never waits for Kafka.
fn spawn_background_flush(config: Option<&std::path::Path>) {
    use std::os::unix::process::CommandExt;
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let mut cmd = std::process::Command::new(exe);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd.arg("flush")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0);
    if let Err(e) = cmd.spawn() {
        tracing::warn!(error = %e, "could not start a background flush; the flush timer will ship the events");
    }
}

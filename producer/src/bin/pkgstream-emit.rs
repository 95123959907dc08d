//! `pkgstream-emit`: the host agent. `record` takes hook events (NDJSON on
//! stdin) into the durable spool; `flush` ships the spool to Kafka; `status`
//! shows what waits. See producer/README.md.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pkgstream_producer::emitter::{flush, record, RecordReport};
use pkgstream_producer::{EmitConfig, ProducerError, Spool, EXIT_RECORDED_WITH_FALLBACK_CONFIG};

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
    /// Read NDJSON events from stdin (or --input) and append them durably to the spool
    /// (with a broken configuration too: then with the fallback, exit 79).
    Record {
        /// Read events from this file instead of stdin.
        #[arg(long)]
        input: Option<PathBuf>,
        /// Afterwards, start `pkgstream-emit flush` in the background and return at once.
        #[arg(long)]
        spawn_flush: bool,
    },
    /// Ship the spool to Kafka; exits 75 with everything kept if Kafka is unreachable,
    /// 65 when records Kafka can never take were set aside.
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
        /// rpmdb path inside the root [default: the first that holds a database of
        /// rpm's %_dbpath, /var/lib/rpm, /usr/lib/sysimage/rpm].
        #[arg(long)]
        dbpath: Option<String>,
        /// Record the snapshot even when the rpmdb lists no package (refused otherwise: exit 66).
        #[arg(long)]
        allow_empty: bool,
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
    let legacy = pkgstream_producer::config::ignored_legacy_env(
        std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    );
    if !legacy.is_empty() {
        tracing::warn!(variables = %legacy.join(" "), "ignored: pkgstream-emit reads PKGSTREAM_EMIT__<SECTION>__<KEY> (PKGSTREAM__ is the central side's)");
    }
    if let Command::Record { input, spawn_flush } = &cli.command {
        return run_record(cli.config.as_deref(), input.as_deref(), *spawn_flush);
    }
    let cfg = EmitConfig::load(cli.config.as_deref())?;
    let spool = Spool::open(&cfg.spool.dir, cfg.spool_limits())?;
    match cli.command {
        Command::Record { .. } => unreachable!("handled above"),
        Command::Flush { timeout } => {
            let timeout = Duration::from_secs(timeout.unwrap_or(cfg.flush.timeout_secs));
            let Some(_lock) = spool.try_flush_lock()? else {
                tracing::info!("another flush is running; it will ship what was recorded");
                return Ok(ExitCode::SUCCESS);
            };
            let report = flush(&cfg, &spool, timeout)?;
            tracing::info!(changes = report.changes, snapshots = report.snapshots, set_aside = report.set_aside, corrupt_bytes = report.corrupt_bytes, brokers = %cfg.kafka.brokers, "flushed");
            if report.set_aside > 0 {
                eprintln!(
                    "pkgstream-emit: error: {} record(s) that Kafka at {} will never take were set aside in {} (each with a .reason file); everything else was shipped",
                    report.set_aside,
                    cfg.kafka.brokers,
                    spool.dir().join("dead").display()
                );
                return Ok(ExitCode::from(65));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Inventory {
            root,
            dbpath,
            allow_empty,
            spawn_flush,
        } => {
            let line = pkgstream_producer::inventory::snapshot_line(
                root.as_deref(),
                dbpath.as_deref(),
                allow_empty,
                Duration::from_secs(120),
            )?;
            let report = record(&cfg, &spool, std::io::Cursor::new(line), "rpmdb")?;
            print_problems(&report);
            if report.snapshots == 0 {
                let first = report.rejected.first().map(ToString::to_string);
                anyhow::bail!(
                    "inventory snapshot not recorded: {}",
                    first.unwrap_or_else(|| "no snapshot".into())
                );
            }
            tracing::info!(snapshots = report.snapshots, evicted = report.evicted_snapshots, spool = %spool.dir().display(), "inventory recorded");
            if spawn_flush {
                spawn_background_flush(cli.config.as_deref());
            }
            Ok(if report.rejected.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(65)
            })
        }
        Command::Status => {
            let stats = spool.stats()?;
            println!("spool {}: {} bytes of change events, {} bytes of inventory snapshots, {} segment(s)", spool.dir().display(), stats.change_bytes, stats.inventory_bytes, stats.segments);
            println!(
                "set aside (dead letters): {} in {} ({} B)",
                stats.dead_letters,
                spool.dir().join("dead").display(),
                stats.dead_letter_bytes
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `record`: spools even with a broken configuration (with the fallback,
/// then exit 79), because a change rpm committed must not be lost.
fn run_record(
    config: Option<&std::path::Path>,
    input: Option<&std::path::Path>,
    spawn_flush: bool,
) -> anyhow::Result<ExitCode> {
    let loaded = EmitConfig::load_or_fallback(config);
    let cfg = &loaded.config;
    if loaded.error.is_some() {
        // The error itself is the last line on stderr, once recorded.
        tracing::warn!(spool = %cfg.spool.dir.display(), "configuration broken: recording with the fallback (compiled defaults, spool.dir and [host] as far as readable)");
    }
    let with_config_error = |e: anyhow::Error| {
        match &loaded.error {
        Some(config_error) => anyhow::Error::new(ProducerError::Config(format!(
            "{config_error}; and the events could not be spooled with the fallback configuration either: {e:#}"
        ))),
        None => e,
    }
    };
    let recorded = (|| -> anyhow::Result<RecordReport> {
        let spool = Spool::open(&cfg.spool.dir, cfg.spool_limits())?;
        Ok(match input {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                record(
                    cfg,
                    &spool,
                    std::io::BufReader::new(file),
                    &path.display().to_string(),
                )?
            }
            None => record(cfg, &spool, std::io::stdin().lock(), "stdin")?,
        })
    })();
    let report = recorded.map_err(with_config_error)?;
    tracing::info!(changes = report.changes, snapshots = report.snapshots, rejected = report.rejected.len(), set_aside = report.set_aside, spool = %cfg.spool.dir.display(), "recorded");
    print_problems(&report);
    if let Some(e) = &loaded.error {
        eprintln!(
            "pkgstream-emit: error: {e}; {} change(s) and {} snapshot(s) were recorded anyway into {} with the fallback configuration; fix the configuration, then `pkgstream-emit flush` ships them",
            report.changes,
            report.snapshots,
            cfg.spool.dir.display()
        );
        return Ok(ExitCode::from(EXIT_RECORDED_WITH_FALLBACK_CONFIG));
    }
    if spawn_flush && report.changes + report.snapshots > 0 {
        spawn_background_flush(config);
    }
    Ok(if report.rejected.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(65)
    })
}

/// Prints each refused line and each cut value on stderr, one per line.
fn print_problems(report: &RecordReport) {
    for e in &report.rejected {
        eprintln!("pkgstream-emit: rejected: {e}");
    }
    for note in &report.adjusted {
        eprintln!("pkgstream-emit: cut: {note}");
    }
    if report.set_aside > 0 {
        eprintln!(
            "pkgstream-emit: {} refused line(s) kept as dead letters in the spool (`pkgstream-emit status`)",
            report.set_aside
        );
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

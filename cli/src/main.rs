//! `pkgstream`: the central side's command. See `pkgstream --help`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use pkgstream::tail::{tail, TailOptions};

#[derive(Parser)]
#[command(name = "pkgstream", version, about = "pkgstream: package change events of an RPM fleet")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the events of a topic as JSON lines (no consumer group, nothing committed).
    Tail {
        /// Kafka bootstrap servers.
        #[arg(long, env = "PKGSTREAM__KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Topic to read.
        #[arg(long, default_value = "pkgstream.changes.raw")]
        topic: String,
        /// Start at the beginning instead of the end.
        #[arg(long)]
        from_beginning: bool,
        /// Stop after N events.
        #[arg(long)]
        max: Option<usize>,
        /// Stop after this many seconds without a new event.
        #[arg(long)]
        idle_secs: Option<u64>,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal()).init();
    let result = match Cli::parse().command {
        Command::Tail { brokers, topic, from_beginning, max, idle_secs } => {
            let opts = TailOptions { brokers, topic, from_beginning, max, idle: idle_secs.map(Duration::from_secs) };
            tail(&opts, &mut std::io::stdout().lock()).map(|r| {
                eprintln!("pkgstream tail: {} event(s), {} undecodable", r.printed, r.undecodable);
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkgstream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `pkgstream`: the central side's command. See `pkgstream --help`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use pkgstream::config::PipelineConfig;
use pkgstream::drift::{render_prometheus, render_table, DriftOptions};
use pkgstream::query::{parse_time, print, ChangeFilter, Queries};
use pkgstream::replay::{print_summary, replay, ReplayOptions, ReplayOutput};
use pkgstream::tail::{tail, TailOptions};
use pkgstream_router::metrics::RouterMetrics;
use pkgstream_router::Router;
use pkgstream_runtime::config::KafkaConfig;
use pkgstream_runtime::health::{self, Readiness};
use pkgstream_runtime::shutdown::Shutdown;
use pkgstream_sinks::metrics::{FleetMetrics, MetricsSink};
use pkgstream_sinks::search::{AuditIndexer, SearchSink, SearchSinkMetrics};

#[derive(Parser)]
#[command(
    name = "pkgstream",
    version,
    about = "pkgstream: package change events of an RPM fleet"
)]
struct Cli {
    /// Pipeline configuration file (see config/pkgstream.example.toml).
    #[arg(long, short, env = "PKGSTREAM_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the raw topics, enrich and deduplicate, produce the enriched topic (exactly once).
    Router,
    /// Run a sink: read the enriched topic and write it to the search engine or to Prometheus.
    Sink {
        #[command(subcommand)]
        sink: SinkCommand,
    },
    /// What changed on one host, oldest first: who, how (dnf command line or plain rpm), from which repo.
    History {
        /// Host name or machine id.
        host: String,
        #[command(flatten)]
        range: Range,
        /// Print JSON lines (the indexed documents) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Changes across the fleet, oldest first, filtered.
    Changes {
        #[command(flatten)]
        range: Range,
        /// Only this action (install, upgrade, downgrade, reinstall, remove, obsolete).
        #[arg(long)]
        action: Option<String>,
        /// Only this source (dnf, yum, rpm, inventory).
        #[arg(long)]
        source: Option<String>,
        /// Only this package name.
        #[arg(long)]
        package: Option<String>,
        /// Only this host group.
        #[arg(long)]
        group: Option<String>,
        /// Only changes outside the host's maintenance window.
        #[arg(long)]
        outside_window: bool,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Drift per host group and package: versions and host counts, outlier hosts, stale and contradicted snapshots.
    Drift {
        /// Only this host group.
        #[arg(long)]
        group: Option<String>,
        /// Only this package (repeatable).
        #[arg(long = "package")]
        packages: Vec<String>,
        /// The version a package should be at, PACKAGE=VERSION (E:V-R or V-R; repeatable) [default: the majority in each group].
        #[arg(long)]
        expect: Vec<String>,
        /// A snapshot older than this is stale (90m, 24h, 7d, or an RFC 3339 time).
        #[arg(long, default_value = "2d")]
        stale: String,
        /// Outlier hosts listed per group and package, at most.
        #[arg(long, default_value_t = 20)]
        max_outliers: usize,
        /// Output: table, json, or prometheus (for a textfile collector).
        #[arg(long, default_value = "table")]
        format: String,
    },
    /// Replay the enriched changes of a time range (Kafka timestamps) for an audit: NDJSON, an Avro container file, or a history index.
    Replay {
        /// From: an RFC 3339 time or a duration ago (7d).
        #[arg(long)]
        from: String,
        /// Until (exclusive) [default: now].
        #[arg(long)]
        to: Option<String>,
        /// Topic [default: topics.changes_enriched of the config].
        #[arg(long)]
        topic: Option<String>,
        /// Only this host (name or machine id).
        #[arg(long)]
        host: Option<String>,
        /// Only this host group.
        #[arg(long)]
        group: Option<String>,
        /// Only this package name.
        #[arg(long)]
        package: Option<String>,
        /// Only this action (install, upgrade, downgrade, reinstall, remove, obsolete).
        #[arg(long)]
        action: Option<String>,
        /// ndjson, avro (an Avro object container file) or index (history documents under --index, written by the search sink's code).
        #[arg(long, default_value = "ndjson")]
        format: String,
        /// Output file ("-": standard output).
        #[arg(long, short, default_value = "-")]
        out: PathBuf,
        /// With --format index: the index prefix (documents go to PREFIX-changes-YYYY.MM on [search_sink].url).
        #[arg(long)]
        index: Option<String>,
    },
    /// Simulate a fleet (hosts, snapshots, a day of change traffic) through the producer's own spool and flush code.
    Simulate(pkgstream::simulate::SimulateArgs),
    /// The pipeline configuration file: `pkgstream config check FILE`.
    Config {
        #[command(subcommand)]
        action: ConfigCommand,
    },
    /// Print the events of a topic as JSON lines (no consumer group, nothing committed).
    Tail {
        /// Kafka bootstrap servers [default: kafka.brokers of the config].
        #[arg(long)]
        brokers: Option<String>,
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
    /// The Kafka ACLs a deployment needs (least privilege), as kafka-acls.sh commands for an admin.
    Acls {
        /// Print the commands (the only mode: pkgstream holds no admin credentials).
        #[arg(long, required = true)]
        print: bool,
        /// Resource names are exact (literal) or prefixes (prefixed: covers name.suffix too).
        #[arg(long, default_value = "literal", value_parser = ["literal", "prefixed"])]
        pattern: String,
        /// The admin's client properties file named in the commands.
        #[arg(long, default_value = "admin.properties")]
        command_config: String,
        /// Principal of the hosts (every host certificate maps to it).
        #[arg(long, default_value = "User:pkgstream-host")]
        host_principal: String,
        /// Principal of the router.
        #[arg(long, default_value = "User:pkgstream-router")]
        router_principal: String,
        /// Principal of the sinks.
        #[arg(long, default_value = "User:pkgstream-sink")]
        sink_principal: String,
        /// Principal of replay and tail.
        #[arg(long, default_value = "User:pkgstream-query")]
        query_principal: String,
    },
}

/// A time range and a row limit.
#[derive(clap::Args)]
struct Range {
    /// From: a duration ago (90m, 24h, 7d) or an RFC 3339 time [changes: 24h; history: the beginning].
    #[arg(long)]
    since: Option<String>,
    /// Until (exclusive), same forms [default: now].
    #[arg(long)]
    until: Option<String>,
    /// At most this many rows.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

impl Range {
    fn filter(&self, default_since: Option<&str>) -> anyhow::Result<ChangeFilter> {
        let now = chrono::Utc::now();
        let t = |s: &Option<String>, d: Option<&str>| -> anyhow::Result<Option<i64>> {
            Ok(match s.as_deref().or(d) {
                Some(v) => Some(parse_time(v, now)?),
                None => None,
            })
        };
        Ok(ChangeFilter {
            since: t(&self.since, default_since)?,
            until: t(&self.until, None)?,
            limit: self.limit,
            ..Default::default()
        })
    }
}

#[derive(Subcommand)]
enum SinkCommand {
    /// Bulk-index changes, package state and hosts into Elasticsearch/OpenSearch ([search_sink]).
    Search,
    /// Count changes and track watched package versions for Prometheus ([metrics_sink]).
    Metrics,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a pipeline TOML (and PKGSTREAM__* overrides) as the stages would at start, without I/O; exit 1 naming the key on error.
    Check {
        /// The file to check (e.g. the rendered ConfigMap of the Helm chart).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
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
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pkgstream: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = match &cli.command {
        // Checks the file it is given: --config need not exist or be valid.
        Command::Config { .. } => PipelineConfig::default(),
        _ => PipelineConfig::load(cli.config.as_deref())?,
    };
    match cli.command {
        Command::Router => {
            let metrics = Arc::new(RouterMetrics::new().context("metrics")?);
            let ready = Readiness::default();
            health::serve(
                &cfg.router.metrics_listen,
                metrics.registry.clone(),
                ready.clone(),
            )?;
            let shutdown = Shutdown::on_signals()?;
            let router = Router {
                kafka: cfg.kafka,
                topics: cfg.topics,
                config: cfg.router,
                metrics,
                ready,
            };
            router.run(&shutdown)?;
            Ok(())
        }
        Command::Sink {
            sink: SinkCommand::Search,
        } => {
            let metrics = Arc::new(SearchSinkMetrics::new().context("metrics")?);
            let ready = Readiness::default();
            health::serve(
                &cfg.search_sink.metrics_listen,
                metrics.registry.clone(),
                ready.clone(),
            )?;
            let shutdown = Shutdown::on_signals()?;
            SearchSink {
                kafka: cfg.kafka,
                topics: cfg.topics,
                config: cfg.search_sink,
                metrics,
                ready,
            }
            .run(&shutdown)?;
            Ok(())
        }
        Command::Sink {
            sink: SinkCommand::Metrics,
        } => {
            let fleet = FleetMetrics::new(&cfg.metrics_sink.watch_packages).context("metrics")?;
            let registry = fleet.registry.clone();
            let ready = Readiness::default();
            health::serve(&cfg.metrics_sink.metrics_listen, registry, ready.clone())?;
            let shutdown = Shutdown::on_signals()?;
            MetricsSink {
                kafka: cfg.kafka,
                topics: cfg.topics,
                config: cfg.metrics_sink,
                metrics: Arc::new(Mutex::new(fleet)),
                ready,
            }
            .run(&shutdown)?;
            Ok(())
        }
        Command::History { host, range, json } => {
            let mut filter = range.filter(None)?;
            filter.validate()?;
            let q = Queries::new(&cfg.search_sink)?;
            filter.host_id = Some(q.resolve_host(&host)?);
            let docs = q.changes(&filter)?;
            print(&docs, json, &mut std::io::stdout().lock())?;
            eprintln!("pkgstream history: {} change(s) on {host}", docs.len());
            Ok(())
        }
        Command::Changes {
            range,
            action,
            source,
            package,
            group,
            outside_window,
            json,
        } => {
            let filter = ChangeFilter {
                action,
                source,
                package,
                group,
                outside_window,
                ..range.filter(Some("24h"))?
            };
            let docs = Queries::new(&cfg.search_sink)?.changes(&filter)?;
            print(&docs, json, &mut std::io::stdout().lock())?;
            eprintln!("pkgstream changes: {} change(s)", docs.len());
            Ok(())
        }
        Command::Drift {
            group,
            packages,
            expect,
            stale,
            max_outliers,
            format,
        } => {
            let mut expected = std::collections::BTreeMap::new();
            for e in &expect {
                let (p, v) = e
                    .split_once('=')
                    .filter(|(p, v)| !p.is_empty() && !v.is_empty())
                    .ok_or_else(|| anyhow::anyhow!("--expect '{e}': expected PACKAGE=VERSION, e.g. openssl-libs=1:3.0.7-27.el9"))?;
                expected.insert(p.to_owned(), v.to_owned());
            }
            if !["table", "json", "prometheus"].contains(&format.as_str()) {
                anyhow::bail!("--format '{format}': one of table, json, prometheus");
            }
            let opts = DriftOptions {
                group,
                packages,
                expect: expected,
                stale_before: parse_time(&stale, chrono::Utc::now())?,
                max_outliers,
            };
            let report = Queries::new(&cfg.search_sink)?.drift(&opts)?;
            match format.as_str() {
                "json" => println!("{}", serde_json::to_string_pretty(&report)?),
                "prometheus" => print!("{}", render_prometheus(&report)),
                _ => print!("{}", render_table(&report)),
            }
            Ok(())
        }
        Command::Replay {
            from,
            to,
            topic,
            host,
            group,
            package,
            action,
            format,
            out,
            index,
        } => {
            let now = chrono::Utc::now();
            if let Some(a) = &action {
                ChangeFilter {
                    action: Some(a.clone()),
                    ..Default::default()
                }
                .validate()?;
            }
            let topic = topic.unwrap_or(cfg.topics.changes_enriched);
            let opts = ReplayOptions {
                kafka: cfg.kafka.clone(),
                topic: topic.clone(),
                from_ms: parse_time(&from, now)? / 1000,
                to_ms: to.map_or(Ok(now.timestamp_micros()), |t| parse_time(&t, now))? / 1000,
                host,
                group,
                package,
                action,
            };
            let shutdown = Shutdown::on_signals()?;
            let report = match (format.as_str(), index) {
                ("index", Some(prefix)) => {
                    if out.as_os_str() != "-" {
                        anyhow::bail!(
                            "--out does not go with --format index (the documents go to --index)"
                        );
                    }
                    let search = pkgstream_sinks::config::SearchSinkConfig {
                        index_prefix: prefix.clone(),
                        ..cfg.search_sink
                    };
                    search
                        .validate()
                        .with_context(|| format!("--index {prefix}"))?;
                    let ix = AuditIndexer::open(&search, &topic, &shutdown)?;
                    replay(&opts, ReplayOutput::Index(Box::new(ix)), &shutdown)?
                }
                ("index", None) => anyhow::bail!("--format index needs --index PREFIX"),
                (_, Some(_)) => anyhow::bail!("--index goes with --format index"),
                (f @ ("ndjson" | "avro"), None) => {
                    let to_file = out.as_os_str() != "-";
                    let mut w: Box<dyn Write> = if to_file {
                        Box::new(std::io::BufWriter::new(
                            std::fs::File::create(&out)
                                .with_context(|| format!("creating {}", out.display()))?,
                        ))
                    } else {
                        Box::new(std::io::stdout().lock())
                    };
                    let output = if f == "avro" {
                        ReplayOutput::Avro(&mut w)
                    } else {
                        ReplayOutput::Ndjson(&mut w)
                    };
                    let r = replay(&opts, output, &shutdown);
                    w.flush()
                        .with_context(|| format!("writing {}", out.display()))?;
                    r?
                }
                (f, None) => anyhow::bail!("--format '{f}': ndjson, avro or index"),
            };
            Ok(print_summary(&report, &topic)?)
        }
        Command::Config {
            action: ConfigCommand::Check { file },
        } => {
            PipelineConfig::load(Some(&file))
                .with_context(|| format!("config check {}", file.display()))?;
            println!("pkgstream config check: {}: valid", file.display());
            Ok(())
        }
        Command::Simulate(args) => Ok(pkgstream::simulate::command(&args, &cfg)?),
        Command::Acls {
            print: _,
            pattern,
            command_config,
            host_principal,
            router_principal,
            sink_principal,
            query_principal,
        } => {
            use pkgstream::acls::{acl_lines, render, PatternType, Principals};
            let who = Principals {
                host: host_principal,
                router: router_principal,
                sink: sink_principal,
                query: query_principal,
            };
            let pattern = if pattern == "prefixed" {
                PatternType::Prefixed
            } else {
                PatternType::Literal
            };
            let lines = acl_lines(&cfg.topics, &who, pattern);
            print!("{}", render(&cfg.kafka.brokers, &command_config, &lines));
            Ok(())
        }
        Command::Tail {
            brokers,
            topic,
            from_beginning,
            max,
            idle_secs,
        } => {
            let opts = TailOptions {
                kafka: KafkaConfig {
                    brokers: brokers.unwrap_or(cfg.kafka.brokers.clone()),
                    ..cfg.kafka.clone()
                },
                topic,
                from_beginning,
                max,
                idle: idle_secs.map(Duration::from_secs),
            };
            let report = tail(&opts, &mut std::io::stdout().lock())?;
            eprintln!(
                "pkgstream tail: {} event(s), {} undecodable",
                report.printed, report.undecodable
            );
            Ok(())
        }
    }
}

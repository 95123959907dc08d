//! `pkgstream acls --print`: the Kafka ACLs a deployment needs, least
//! privilege, as `kafka-acls.sh` commands to run with an admin's
//! `--command-config`. Topic names come from `[topics]`, groups and the
//! transactional-id prefix from the stages' defaults (prefixed, so
//! `pkgstream-router-rebuild`, `pkgstream-sink-search`... are covered).
//!
//! - the host principal may only write (idempotently: Write implies
//!   IdempotentWrite since Kafka 3.0) to the raw topics;
//! - the router reads the raw topics, the hosts topic and the enriched
//!   topic (to rebuild its dedupe window), writes enriched and DLQ, in its
//!   groups and under its transactional-id prefix;
//! - the sinks read enriched and write the DLQ, in their groups;
//! - the query principal (replay, tail) reads enriched, and may look up
//!   the coordinator of their groups (Describe: librdkafka asks for it
//!   even when partitions are assigned by hand and nothing is committed;
//!   without Read the group can never commit nor join).
//!
//! No principal may create topics: an admin creates them (the router's
//! "create if missing" is for labs).

use pkgstream_runtime::config::TopicsConfig;

/// How the resource names match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternType {
    /// The exact names.
    Literal,
    /// Every resource whose name starts with the name.
    Prefixed,
}

impl PatternType {
    fn as_str(self) -> &'static str {
        match self {
            PatternType::Literal => "literal",
            PatternType::Prefixed => "prefixed",
        }
    }
}

/// The principals the ACLs grant to.
#[derive(Clone, Debug)]
pub struct Principals {
    /// The hosts (every host certificate maps to it, e.g. with
    /// `ssl.principal.mapping.rules`).
    pub host: String,
    /// The router.
    pub router: String,
    /// The search and metrics sinks.
    pub sink: String,
    /// `replay` and `tail`.
    pub query: String,
}

impl Default for Principals {
    fn default() -> Self {
        Principals {
            host: "User:pkgstream-host".into(),
            router: "User:pkgstream-router".into(),
            sink: "User:pkgstream-sink".into(),
            query: "User:pkgstream-query".into(),
        }
    }
}

/// The router's consumer groups and transactional ids start with this.
pub const ROUTER_PREFIX: &str = "pkgstream-router";
/// The sinks' consumer groups start with this.
pub const SINK_GROUP_PREFIX: &str = "pkgstream-sink";
/// The group id of `pkgstream replay` (nothing is committed in it).
pub const REPLAY_GROUP: &str = "pkgstream-replay";
/// The group id of `pkgstream tail` (nothing is committed in it).
pub const TAIL_GROUP: &str = "pkgstream-tail";

/// The ACLs as `kafka-acls.sh` arguments, one grant per line, starting at
/// `--add`.
pub fn acl_lines(topics: &TopicsConfig, who: &Principals, pattern: PatternType) -> Vec<String> {
    let p = pattern.as_str();
    let topic_args = |names: &[&str]| {
        names
            .iter()
            .map(|t| format!("--topic {t}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let grant = |principal: &str, ops: &[&str], resources: String| {
        let ops: Vec<String> = ops.iter().map(|o| format!("--operation {o}")).collect();
        format!(
            "--add --allow-principal {principal} {} {resources} --resource-pattern-type {p}",
            ops.join(" ")
        )
    };
    let t = topics;
    vec![
        grant(
            &who.host,
            &["Write", "Describe"],
            topic_args(&[&t.changes_raw, &t.inventory_raw]),
        ),
        grant(
            &who.router,
            &["Read", "Describe"],
            topic_args(&[
                &t.changes_raw,
                &t.inventory_raw,
                &t.hosts,
                &t.changes_enriched,
            ]),
        ),
        grant(
            &who.router,
            &["Write", "Describe"],
            topic_args(&[&t.changes_enriched, &t.dlq]),
        ),
        grant(&who.router, &["Read"], format!("--group {ROUTER_PREFIX}")),
        grant(
            &who.router,
            &["Write", "Describe"],
            format!("--transactional-id {ROUTER_PREFIX}"),
        ),
        grant(
            &who.sink,
            &["Read", "Describe"],
            topic_args(&[&t.changes_enriched]),
        ),
        grant(&who.sink, &["Write", "Describe"], topic_args(&[&t.dlq])),
        grant(&who.sink, &["Read"], format!("--group {SINK_GROUP_PREFIX}")),
        grant(
            &who.query,
            &["Read", "Describe"],
            topic_args(&[&t.changes_enriched]),
        ),
        grant(
            &who.query,
            &["Describe"],
            format!("--group {REPLAY_GROUP} --group {TAIL_GROUP}"),
        ),
    ]
}

/// The whole script: one `kafka-acls.sh` command per grant.
pub fn render(brokers: &str, command_config: &str, lines: &[String]) -> String {
    let mut out = String::from(
        "# The Kafka ACLs of pkgstream (least privilege); run as a Kafka admin.\n\
         # Topics are created by the admin: no pkgstream principal may create them.\n",
    );
    for l in lines {
        out.push_str(&format!(
            "kafka-acls.sh --bootstrap-server {brokers} --command-config {command_config} {l}\n"
        ));
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_host_may_only_write_the_raw_topics() {
        let lines = acl_lines(
            &TopicsConfig::default(),
            &Principals::default(),
            PatternType::Literal,
        );
        let host: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("User:pkgstream-host "))
            .collect();
        assert_eq!(
            host,
            [&"--add --allow-principal User:pkgstream-host --operation Write --operation Describe --topic pkgstream.changes.raw --topic pkgstream.inventory.raw --resource-pattern-type literal".to_owned()]
        );
        assert!(lines.iter().all(|l| !l.contains("Create")));
        let script = render("k:9094", "admin.properties", &lines);
        assert_eq!(
            script
                .matches("kafka-acls.sh --bootstrap-server k:9094")
                .count(),
            10
        );
        // The query principal may find its groups' coordinator, never
        // commit in them.
        let query_groups: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains("User:pkgstream-query ") && l.contains("--group"))
            .collect();
        assert_eq!(
            query_groups,
            [&"--add --allow-principal User:pkgstream-query --operation Describe --group pkgstream-replay --group pkgstream-tail --resource-pattern-type literal".to_owned()]
        );
    }
}

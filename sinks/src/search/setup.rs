//! Start-up: the stored scripts, the index templates and mappings, the
//! state indices, and a retention policy where the engine has a lifecycle
//! manager (feature-detected; none is not an error).

use serde_json::{json, Value};
use tracing::{info, warn};

use super::client::{CallError, EngineClient};
use super::documents::{Indices, SCRIPTS};
use crate::config::SearchSinkConfig;

/// Which lifecycle manager the engine offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// Elasticsearch ILM: a delete phase after `retention_days`.
    Ilm,
    /// OpenSearch ISM: a delete transition after `retention_days`.
    Ism,
    /// Neither (e.g. an OSS build without the plugin), or retention 0.
    None,
}

fn keyword() -> Value {
    json!({"type": "keyword"})
}

fn package_mapping() -> Value {
    json!({"properties": {
        "name": keyword(), "epoch": {"type": "integer"}, "version": keyword(),
        "release": keyword(), "architecture": keyword(), "evr": keyword(),
        "evr_sort": keyword(), "repo": keyword(), "vendor": keyword(),
        "buildtime": {"type": "date"}, "installed": {"type": "date"},
        "size": {"type": "long"}, "checksum": keyword()
    }})
}

fn host_mapping() -> Value {
    json!({"properties": {
        "id": keyword(), "name": keyword(), "architecture": keyword(),
        "os": {"properties": {"platform": keyword(), "version": keyword()}}
    }})
}

fn enrichment_mapping() -> Value {
    json!({"properties": {
        "hostgroup": keyword(), "environment": keyword(), "owner": keyword(),
        "datacenter": keyword(), "known_host": {"type": "boolean"},
        "source": keyword(), "action": keyword(), "event_id": keyword(),
        "outside_maintenance_window": {"type": "boolean"},
        "unexplained_rpm": {"type": "boolean"},
        "replaced": package_mapping(),
        "transaction": {"properties": {
            "rpm_tid": {"type": "long"}, "history_id": {"type": "long"}, "start": {"type": "date"}
        }}
    }})
}

/// Mappings of the change history.
pub fn changes_mappings() -> Value {
    json!({
        "date_detection": false,
        "dynamic_templates": [{"labels": {
            "path_match": "labels.*", "match_mapping_type": "string",
            "mapping": {"type": "keyword"}
        }}],
        "properties": {
            "@timestamp": {"type": "date"},
            "event_time_us": {"type": "long"},
            "event": {"properties": {
                "id": keyword(), "action": keyword(), "kind": keyword(),
                "category": keyword(), "type": keyword(), "created": {"type": "date"},
                "dataset": keyword()
            }},
            "host": host_mapping(),
            "package": package_mapping(),
            "user": {"properties": {"name": keyword()}},
            "process": {"properties": {"command_line": {"type": "keyword", "ignore_above": 4096}}},
            "labels": {"type": "object"},
            "pkgstream": enrichment_mapping()
        }
    })
}

/// Mappings of the current-state index.
pub fn packages_mappings() -> Value {
    json!({
        "date_detection": false,
        "properties": {
            "@timestamp": {"type": "date"},
            "event_time_us": {"type": "long"},
            "host": host_mapping(),
            "package": package_mapping(),
            "pkgstream": enrichment_mapping()
        }
    })
}

/// Mappings of the host index.
pub fn hosts_mappings() -> Value {
    json!({
        "date_detection": false,
        "properties": {
            "host": host_mapping(),
            "pkgstream": enrichment_mapping(),
            "last_seen": {"type": "date"}, "last_seen_us": {"type": "long"},
            "last_snapshot": {"type": "date"}, "last_snapshot_us": {"type": "long"},
            "package_count": {"type": "integer"}, "drift_count": {"type": "integer"}
        }
    })
}

fn fatal_or_retry(e: CallError) -> String {
    match e {
        CallError::Retry(s) => s,
        CallError::Fatal(e) => e.to_string(),
    }
}

/// Installs scripts, templates, indices and the lifecycle policy. Errors
/// are returned as text (the caller retries while the engine is down and
/// stops on a fatal one).
pub fn setup(
    client: &EngineClient,
    idx: &Indices,
    cfg: &SearchSinkConfig,
) -> Result<Lifecycle, CallError> {
    reach(client)?;
    for (id, source) in SCRIPTS {
        client.json(
            "PUT",
            &format!("/_scripts/{id}"),
            Some(&json!({"script": {"lang": "painless", "source": source}})),
        )?;
    }
    let lifecycle = detect_lifecycle(client, idx, cfg)?;
    changes_template(client, idx, cfg, lifecycle)?;
    for (name, mappings) in [
        (idx.packages(), packages_mappings()),
        (idx.hosts(), hosts_mappings()),
    ] {
        client.json(
            "PUT",
            &format!("/_index_template/{name}"),
            Some(&json!({
                "index_patterns": [name],
                "priority": 200,
                "template": {
                    "settings": {"number_of_shards": cfg.shards, "number_of_replicas": cfg.replicas},
                    "mappings": mappings
                },
                "_meta": {"managed_by": "pkgstream sink search"}
            })),
        )?;
        if !client.exists(&format!("/{name}"))? {
            match client.json("PUT", &format!("/{name}"), None) {
                Ok(_) => info!(index = name, "index created"),
                // Another instance created it in between.
                Err(CallError::Fatal(e)) if e.to_string().contains("resource_already_exists") => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(lifecycle)
}

/// Set-up for an audit replay (`pkgstream replay --format index`): the
/// change-history template only — no state indices, no scripts, and no
/// retention policy (an audit copy is kept until someone deletes it).
pub fn setup_history(
    client: &EngineClient,
    idx: &Indices,
    cfg: &SearchSinkConfig,
) -> Result<(), CallError> {
    reach(client)?;
    // Replaying into an existing (e.g. the live) prefix keeps its template,
    // lifecycle policy included.
    if client.exists(&format!("/_index_template/{}-changes", idx.prefix()))? {
        return Ok(());
    }
    changes_template(client, idx, cfg, Lifecycle::None)
}

fn reach(client: &EngineClient) -> Result<(), CallError> {
    let root = client.first_contact()?;
    info!(
        url = %client.display_url(),
        distribution = root["version"]["distribution"].as_str().unwrap_or("elasticsearch"),
        version = root["version"]["number"].as_str().unwrap_or("?"),
        "search engine reached"
    );
    Ok(())
}

/// The template of the monthly change indices (`<prefix>-changes-*`).
fn changes_template(
    client: &EngineClient,
    idx: &Indices,
    cfg: &SearchSinkConfig,
    lifecycle: Lifecycle,
) -> Result<(), CallError> {
    let mut settings = json!({
        "number_of_shards": cfg.shards,
        "number_of_replicas": cfg.replicas,
    });
    if lifecycle == Lifecycle::Ilm {
        settings["index.lifecycle.name"] = json!(format!("{}-changes", idx.prefix()));
    }
    client.json(
        "PUT",
        &format!("/_index_template/{}-changes", idx.prefix()),
        Some(&json!({
            "index_patterns": [idx.changes_pattern()],
            "priority": 200,
            "template": {"settings": settings, "mappings": changes_mappings()},
            "_meta": {"managed_by": "pkgstream sink search"}
        })),
    )?;
    Ok(())
}

fn detect_lifecycle(
    client: &EngineClient,
    idx: &Indices,
    cfg: &SearchSinkConfig,
) -> Result<Lifecycle, CallError> {
    if cfg.retention_days == 0 {
        info!("retention_days = 0: change history kept forever");
        return Ok(Lifecycle::None);
    }
    let days = format!("{}d", cfg.retention_days);
    let policy = format!("{}-changes", idx.prefix());
    let probe = |path: &str| client.call("GET", path, None).map(|(s, _)| s == 200);
    if probe("/_ilm/status")? {
        client.json(
            "PUT",
            &format!("/_ilm/policy/{policy}"),
            Some(&json!({"policy": {"phases": {
                "hot": {"actions": {}},
                "delete": {"min_age": days, "actions": {"delete": {}}}
            }}})),
        )?;
        info!(policy, retention = %days, "ILM policy installed");
        return Ok(Lifecycle::Ilm);
    }
    if probe("/_plugins/_ism/policies")? {
        let body = json!({"policy": {
            "description": "pkgstream change history retention",
            "default_state": "hot",
            "states": [
                {"name": "hot", "actions": [], "transitions": [{"state_name": "delete", "conditions": {"min_index_age": days}}]},
                {"name": "delete", "actions": [{"delete": {}}], "transitions": []}
            ],
            "ism_template": [{"index_patterns": [idx.changes_pattern()], "priority": 100}]
        }});
        match client.json(
            "PUT",
            &format!("/_plugins/_ism/policies/{policy}"),
            Some(&body),
        ) {
            Ok(_) => {}
            // Exists already: ISM wants seq_no/primary_term to update; keep it.
            Err(CallError::Fatal(e)) if e.to_string().contains("409") => {}
            Err(e) => warn!(error = %fatal_or_retry(e), "ISM policy not installed"),
        }
        info!(policy, retention = %days, "ISM policy installed");
        return Ok(Lifecycle::Ism);
    }
    info!(
        "no lifecycle manager (neither ILM nor ISM answers): change indices are monthly, delete old ones by hand or with a cron job"
    );
    Ok(Lifecycle::None)
}

//! Creating the topics a stage needs when they are missing (the broker's
//! default replication), with an exact error naming the topic otherwise.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::types::RDKafkaErrorCode;
use tracing::{debug, info};

use crate::config::KafkaConfig;
use crate::RuntimeError;

/// A topic to create.
#[derive(Clone, Copy, Debug)]
pub struct TopicSpec<'a> {
    /// Name.
    pub name: &'a str,
    /// Partitions.
    pub partitions: usize,
    /// `cleanup.policy=compact` (a keyed table such as the hosts topic).
    pub compact: bool,
}

type Admin = AdminClient<rdkafka::client::DefaultClientContext>;

/// An admin client of `kafka` and a runtime to drive its calls; `err`
/// turns a reason into the caller's error.
fn admin(
    kafka: &KafkaConfig,
    err: impl Fn(String) -> RuntimeError,
) -> Result<(Admin, tokio::runtime::Runtime), RuntimeError> {
    let admin: Admin = kafka
        .client_config()?
        .create()
        .map_err(|e| err(e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| err(format!("cannot start a runtime for the admin client: {e}")))?;
    Ok((admin, runtime))
}

/// Creates each topic that does not exist yet; one that exists is left as
/// it is.
pub fn create_missing(kafka: &KafkaConfig, topics: &[TopicSpec<'_>]) -> Result<(), RuntimeError> {
    let err = |reason: String| RuntimeError::Kafka {
        brokers: kafka.brokers.clone(),
        reason,
    };
    let (admin, runtime) = admin(kafka, err)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let n = NewTopic::new(t.name, t.partitions as i32, TopicReplication::Fixed(-1));
            if t.compact {
                n.set("cleanup.policy", "compact")
            } else {
                n
            }
        })
        .collect();
    let results = runtime
        .block_on(admin.create_topics(
            &new,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        ))
        .map_err(|e| err(format!("create topics: {e}")))?;
    for r in results {
        match r {
            Ok(topic) => info!(topic, "topic created"),
            Err((topic, RDKafkaErrorCode::TopicAlreadyExists)) => {
                debug!(topic, "topic already exists")
            }
            Err((topic, e)) => return Err(err(format!("create topic {topic}: {e}"))),
        }
    }
    Ok(())
}

/// The largest record batch each of `topics` takes (its effective
/// `max.message.bytes`), `None` for a topic whose config cannot be read
/// (it does not exist, or the client may not describe it).
pub fn max_message_bytes(
    kafka: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<Option<usize>>, RuntimeError> {
    let err = |reason: String| RuntimeError::Kafka {
        brokers: kafka.brokers.clone(),
        reason,
    };
    let (admin, runtime) = admin(kafka, err)?;
    let specs: Vec<ResourceSpecifier<'_>> =
        topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    let results = runtime
        .block_on(admin.describe_configs(
            &specs,
            &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
        ))
        .map_err(|e| err(format!("describe topic configs: {e}")))?;
    Ok(results
        .into_iter()
        .map(|r| {
            r.ok()
                .and_then(|c| c.get("max.message.bytes")?.value.as_deref()?.parse().ok())
        })
        .collect())
}

//! The dead-letter headers every stage writes, so one reader (`pkgstream
//! tail`, an operator's consumer) understands the DLQ whoever wrote to it.

use rdkafka::message::{Header, OwnedHeaders};

/// Headers of a dead letter: why (`code`, `reason`) and where it was read
/// (`topic`, `partition`, `offset`).
pub fn headers(code: &str, reason: &str, topic: &str, partition: i32, offset: i64) -> OwnedHeaders {
    let partition = partition.to_string();
    let offset = offset.to_string();
    [
        ("pkgstream.error.code", code),
        ("pkgstream.error.reason", reason),
        ("pkgstream.source.topic", topic),
        ("pkgstream.source.partition", partition.as_str()),
        ("pkgstream.source.offset", offset.as_str()),
    ]
    .into_iter()
    .fold(OwnedHeaders::new_with_capacity(5), |h, (key, value)| {
        h.insert(Header {
            key,
            value: Some(value),
        })
    })
}

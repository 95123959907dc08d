//! The one error type of this crate.

/// Why an event could not be encoded or decoded. Each variant names what was
/// wrong so that a DLQ header or a log line is enough to act on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemaError {
    /// Fewer bytes than the single-object header (or the datum) needs.
    #[error("truncated event: {len} bytes, the single-object header alone needs 10")]
    TruncatedHeader {
        /// Bytes received.
        len: usize,
    },
    /// The datum ended before the writer schema was satisfied.
    #[error("truncated event: the {schema} datum ends early ({len} bytes after the header)")]
    TruncatedDatum {
        /// `Name vN` of the writer schema.
        schema: String,
        /// Datum bytes received.
        len: usize,
    },
    /// The first two bytes are not the Avro single-object marker `C3 01`.
    #[error("not an Avro single-object event: magic is {found:02x?}, expected [c3, 01]")]
    WrongMagic {
        /// The two bytes found.
        found: [u8; 2],
    },
    /// The writer schema's fingerprint is not one this build ships.
    #[error("unknown writer schema fingerprint {fingerprint} (not a schema version pkgstream ever shipped; is this build older than the producer?)")]
    UnknownFingerprint {
        /// Hex of the 8 fingerprint bytes (CRC-64-AVRO, little endian).
        fingerprint: String,
    },
    /// The writer schema is known but is not the kind the caller asked for.
    #[error("expected a {expected} event, got {found}")]
    WrongKind {
        /// Kind asked for.
        expected: &'static str,
        /// `Name vN` found in the header.
        found: String,
    },
    /// Bytes that do not follow the writer schema.
    #[error("malformed {schema} datum: {reason}")]
    Malformed {
        /// `Name vN` of the writer schema.
        schema: String,
        /// The decoder's reason.
        reason: String,
    },
    /// A complete datum followed by more bytes. A message holds exactly one
    /// event; what follows it is no part of the event, and passing it on
    /// would let it be read as something else (the router appends its
    /// enrichment right after the raw datum).
    #[error("malformed {schema} event: {len} byte(s) after the datum (a message holds exactly one event)")]
    TrailingBytes {
        /// `Name vN` of the writer schema.
        schema: String,
        /// Bytes left after the datum.
        len: usize,
    },
    /// Schema-valid but semantically impossible (empty name, negative size...).
    #[error("invalid {kind}: {field} {reason}")]
    Invalid {
        /// Record kind.
        kind: &'static str,
        /// Path of the offending field, e.g. `package.name`.
        field: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The event could not be serialized with the current schema.
    #[error("cannot encode {schema}: {reason}")]
    Encode {
        /// `Name vN` of the schema.
        schema: String,
        /// The serializer's reason.
        reason: String,
    },
}

impl SchemaError {
    /// A short stable code for metrics labels and DLQ headers.
    pub fn code(&self) -> &'static str {
        match self {
            SchemaError::TruncatedHeader { .. } | SchemaError::TruncatedDatum { .. } => "truncated",
            SchemaError::WrongMagic { .. } => "wrong_magic",
            SchemaError::UnknownFingerprint { .. } => "unknown_schema",
            SchemaError::WrongKind { .. } => "wrong_kind",
            SchemaError::Malformed { .. } => "malformed",
            SchemaError::TrailingBytes { .. } => "trailing_bytes",
            SchemaError::Invalid { .. } => "invalid",
            SchemaError::Encode { .. } => "encode",
        }
    }
}

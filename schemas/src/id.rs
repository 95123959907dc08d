//! Idempotency keys. The derivations are part of the contract
//! (schemas/README.md): changing them makes old and new reports of one
//! change look different, so they are versioned by their prefix.

use sha2::{Digest, Sha256};

use crate::event::{Action, EventId};

/// The `event_id` of a package change: SHA-256 over
/// `pkgstream.change.v1`, machine_id, action, name, epoch (0 when unset),
/// version, release, arch and the rpm transaction id, each followed by `\n`;
/// the first 16 bytes. Every hook sees these facts, so dnf's and rpm's
/// reports of one change, and any retry, share the id.
#[allow(clippy::too_many_arguments)]
pub fn change_event_id(
    machine_id: &str,
    action: Action,
    name: &str,
    epoch: Option<i32>,
    version: &str,
    release: &str,
    arch: &str,
    rpm_tid: i64,
) -> EventId {
    let mut h = Sha256::new();
    let mut field = |b: &[u8]| {
        h.update(b);
        h.update(b"\n");
    };
    field(b"pkgstream.change.v1");
    field(machine_id.as_bytes());
    field(action.symbol().as_bytes());
    field(name.as_bytes());
    field(itoa(epoch.unwrap_or(0).into()).as_ref());
    field(version.as_bytes());
    field(release.as_bytes());
    field(arch.as_bytes());
    field(itoa(rpm_tid).as_ref());
    truncate(h.finalize().into())
}

/// The `snapshot_id` of an inventory snapshot: SHA-256 over
/// `pkgstream.snapshot.v1`, machine_id and taken_at (microseconds), each
/// followed by `\n`; the first 16 bytes.
pub fn snapshot_id(machine_id: &str, taken_at: i64) -> EventId {
    let mut h = Sha256::new();
    for b in [
        b"pkgstream.snapshot.v1".as_slice(),
        machine_id.as_bytes(),
        itoa(taken_at).as_ref(),
    ] {
        h.update(b);
        h.update(b"\n");
    }
    truncate(h.finalize().into())
}

/// The `snapshot_id` of chunk `index` of the snapshot `whole`: SHA-256
/// over `pkgstream.snapshot-chunk.v1`, the whole snapshot's id (lowercase
/// hex) and the index (decimal), each followed by `\n`; the first 16 bytes.
/// Every chunk gets its own idempotency key (the router's dedupe window and
/// the enriched topic are keyed by the record's first field).
pub fn chunk_id(whole: &EventId, index: i32) -> EventId {
    let mut h = Sha256::new();
    for b in [
        b"pkgstream.snapshot-chunk.v1".as_slice(),
        whole.to_hex().as_bytes(),
        itoa(index.into()).as_ref(),
    ] {
        h.update(b);
        h.update(b"\n");
    }
    truncate(h.finalize().into())
}

fn truncate(digest: [u8; 32]) -> EventId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    EventId(id)
}

/// Decimal text of an integer without allocating.
fn itoa(v: i64) -> ItoaBuf {
    let mut buf = ItoaBuf {
        bytes: [0; 20],
        start: 20,
    };
    let neg = v < 0;
    let mut n = v.unsigned_abs();
    loop {
        buf.start -= 1;
        buf.bytes[buf.start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if neg {
        buf.start -= 1;
        buf.bytes[buf.start] = b'-';
    }
    buf
}

struct ItoaBuf {
    bytes: [u8; 20],
    start: usize,
}

impl AsRef<[u8]> for ItoaBuf {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[self.start..]
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn itoa_matches_to_string() {
        for v in [0, 1, -1, 9, 10, 1_732_435_200, i64::MAX, i64::MIN + 1] {
            assert_eq!(itoa(v).as_ref(), v.to_string().as_bytes());
        }
    }

    #[test]
    fn change_id_is_stable_and_sensitive() {
        let id = |tid| {
            change_event_id(
                "m1",
                Action::Upgrade,
                "openssl",
                None,
                "3.0.7",
                "27.el9",
                "x86_64",
                tid,
            )
        };
        assert_eq!(id(1), id(1));
        assert_ne!(id(1), id(2));
        // epoch unset and epoch 0 are the same change (rpm compares them equal)
        assert_eq!(
            change_event_id("m1", Action::Remove, "a", None, "1", "1", "noarch", 5),
            change_event_id("m1", Action::Remove, "a", Some(0), "1", "1", "noarch", 5)
        );
        // the separator keeps field boundaries: "ab"+"c" differs from "a"+"bc"
        assert_ne!(
            change_event_id("m", Action::Install, "ab", None, "c", "1", "x", 1),
            change_event_id("m", Action::Install, "a", None, "bc", "1", "x", 1)
        );
        // A golden value: the derivation is a contract, this must never change.
        assert_eq!(
            change_event_id(
                "0123456789abcdef0123456789abcdef",
                Action::Upgrade,
                "openssl",
                Some(1),
                "3.0.7",
                "27.el9",
                "x86_64",
                1_732_435_200
            )
            .to_hex(),
            golden_hex()
        );
    }

    /// The derivation computed independently (Python: `hashlib.sha256(text).hexdigest()[:32]`
    /// over the text in schemas/README.md's example).
    fn golden_hex() -> &'static str {
        "b58c81e4f336b584918f376375aa9d0d"
    }
}

//! The search sink's bulk-response parser (`sinks/src/search/retry.rs`:
//! `BulkResponse` as `EngineClient::bulk` reads it with `serde_json`, then
//! `item_verdict`, `ItemStatus::reason` and `request_verdict`, the one place
//! that decides done / retry / reject).
//!
//! Input: two bytes of HTTP status (little endian), then the response body.
//!
//! What must hold, beyond "never panics": every status has exactly one
//! verdict for every item kind; 2xx is done for all; a duplicate `create`
//! (409) of a change is done; the DLQ reason of a rejected item is never
//! empty and names the engine's error type when it gave one.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pkgstream_sinks::search::documents::ItemKind;
use pkgstream_sinks::search::retry::{
    item_verdict, request_verdict, BulkResponse, ItemVerdict, RequestVerdict,
};

fuzz_target!(|data: &[u8]| {
    let [lo, hi, body @ ..] = data else {
        return;
    };
    let status = u16::from_le_bytes([*lo, *hi]);
    let request = request_verdict(status);
    if (200..300).contains(&status) {
        assert_eq!(request, RequestVerdict::Items);
    }
    if request != RequestVerdict::Items {
        return;
    }
    let Ok(resp) = serde_json::from_slice::<BulkResponse>(body) else {
        return;
    };
    for item in &resp.items {
        let st = item.status();
        for kind in [ItemKind::Change, ItemKind::Package, ItemKind::Host] {
            let v = item_verdict(kind, st.status);
            if (200..300).contains(&st.status) {
                assert_eq!(v, ItemVerdict::Done, "{kind:?} {}", st.status);
            }
            if st.status == 409 && kind == ItemKind::Change {
                assert_eq!(v, ItemVerdict::Done, "a duplicate change is done");
            }
            if st.status == 429 || (500..600).contains(&st.status) {
                assert_eq!(v, ItemVerdict::Retry, "{kind:?} {}", st.status);
            }
        }
        let reason = st.reason();
        assert!(!reason.is_empty(), "an empty DLQ reason");
        if let Some(t) = st
            .error
            .as_ref()
            .and_then(|e| e.get("type"))
            .and_then(|t| t.as_str())
        {
            assert!(
                reason.starts_with(t),
                "reason {reason:?} does not start with type {t:?}"
            );
        }
    }
});

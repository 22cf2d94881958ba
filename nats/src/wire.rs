//! Turning the header sets of `muster_schemas::headers` (name, value pairs; schemas has no NATS client) into the
//! client's header map.

use async_nats::HeaderMap;
use muster_schemas::headers::Header;

/// The header map of a set built by `muster_schemas::headers` (`message`, `reply`, `command`, `report`, `txn`,
/// `event`).
pub fn header_map(set: impl IntoIterator<Item = Header>) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (name, value) in set {
        h.insert(name, value.as_str());
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::headers;
    use muster_schemas::MessageKind;

    #[test]
    fn every_pair_becomes_a_header() {
        let h = header_map(headers::txn("server-1", 4));
        assert_eq!(h.get(headers::KIND).map(|v| v.as_str()), Some("txn"));
        assert_eq!(h.get(headers::EPOCH).map(|v| v.as_str()), Some("4"));
        assert_eq!(h.get(headers::CONTENT_TYPE).map(|v| v.as_str()), Some(headers::MSGPACK));
        let h = header_map(headers::message(MessageKind::Heartbeat, "web-1"));
        assert_eq!(h.get(headers::HOST).map(|v| v.as_str()), Some("web-1"));
        assert!(h.get(headers::EPOCH).is_none());
    }
}

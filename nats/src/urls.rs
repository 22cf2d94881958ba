//! NATS server URL lists: `MUSTER_NATS_URL`, the CLI's `--nats` and the test harness all give every node of a
//! cluster, comma-separated, so the first connect survives one node being down.

use async_nats::ServerAddr;

/// The NATS server muster connects to when nothing else is configured: a nats-server on the same host, as in the
/// single-node setup.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Why a URL list cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// The list holds no URL at all.
    #[error("no server URL given")]
    Empty,
    /// One entry is not a NATS URL.
    #[error("{url:?} is not a NATS server URL: {reason}")]
    Invalid {
        /// The entry, trimmed.
        url: String,
        /// The client's reason.
        reason: String,
    },
}

/// Parses a comma-separated list of NATS URLs. Spaces around entries and empty entries are ignored.
pub fn parse_urls(text: &str) -> Result<Vec<ServerAddr>, UrlError> {
    let urls = text
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| u.parse::<ServerAddr>().map_err(|e| UrlError::Invalid { url: u.to_owned(), reason: e.to_string() }))
        .collect::<Result<Vec<_>, _>>()?;
    if urls.is_empty() {
        return Err(UrlError::Empty);
    }
    Ok(urls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(text: &str) -> Vec<String> {
        parse_urls(text).unwrap().into_iter().map(|a| a.into_inner().to_string()).collect()
    }

    #[test]
    fn lists_parse_with_spaces_and_empty_entries() {
        assert_eq!(shown(DEFAULT_NATS_URL), ["nats://127.0.0.1:4222"]);
        assert_eq!(shown(" nats://a:4222, ,nats://b:4223 ,"), ["nats://a:4222", "nats://b:4223"]);
    }

    #[test]
    fn bad_lists_say_which_entry() {
        assert!(matches!(parse_urls(" , "), Err(UrlError::Empty)));
        let err = parse_urls("nats://a:4222,nats://b:notaport").unwrap_err();
        assert!(err.to_string().contains("nats://b:notaport"), "{err}");
    }
}

//! Host selection, pure: which hosts an operator's selector names.
//!
//! A selector is comma-separated terms, and a host is selected when any term matches it: an id glob (`web-*`),
//! `label:key=value`, or `state:STATE` (a host state's reference name, any case). `None` or empty selects every
//! host.

use muster_schemas::api::ApiError;
use muster_schemas::{HostId, HostRecord, HostState};

use super::hosts::Hosts;

/// One term of a selector.
enum Term {
    Label(String, String),
    State(HostState),
    Glob(glob::Pattern),
}

impl Term {
    fn parse(term: &str) -> Result<Self, ApiError> {
        if let Some(l) = term.strip_prefix("label:") {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| ApiError::bad_request(format!("label term {term:?} needs key=value")))?;
            return Ok(Self::Label(k.to_string(), v.to_string()));
        }
        if let Some(s) = term.strip_prefix("state:") {
            let s = s.to_ascii_uppercase();
            return s.parse().map(Self::State).map_err(|_| {
                let names: Vec<&str> = HostState::ALL.iter().map(|s| s.as_str()).collect();
                ApiError::bad_request(format!("unknown host state {s:?}; one of {}", names.join(", ")))
            });
        }
        glob::Pattern::new(term)
            .map(Self::Glob)
            .map_err(|e| ApiError::bad_request(format!("bad host pattern {term:?}: {e}")))
    }

    fn matches(&self, h: &HostRecord) -> bool {
        match self {
            Self::Label(k, v) => h.labels.get(k) == Some(v),
            Self::State(s) => h.state == *s,
            Self::Glob(p) => p.matches(h.id.as_str()),
        }
    }
}

/// The hosts `selector` selects, sorted; an error if none is (or the selector is malformed).
pub fn select_hosts(hosts: &Hosts, selector: Option<&str>) -> Result<Vec<HostId>, ApiError> {
    let sel = selector.unwrap_or("").trim();
    if hosts.is_empty() {
        return Err(ApiError::bad_request("no host is registered"));
    }
    let mut ids: Vec<HostId> = if sel.is_empty() {
        hosts.records().map(|h| h.id.clone()).collect()
    } else {
        let terms =
            sel.split(',').map(str::trim).filter(|t| !t.is_empty()).map(Term::parse).collect::<Result<Vec<_>, _>>()?;
        hosts.records().filter(|h| terms.iter().any(|t| t.matches(h))).map(|h| h.id.clone()).collect()
    };
    if ids.is_empty() {
        return Err(ApiError::bad_request(format!("host selector {sel:?} matches no host")));
    }
    ids.sort();
    Ok(ids)
}

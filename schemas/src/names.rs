//! Parsing the reference names of states, statuses and actions back into their enums: the CLI, the API and the
//! tests read them as text (`HEALTHY`, `TIMEDOUT`, `custom:reload`) and must not compare string literals.

use std::fmt;

/// A name that is not one of an enum's reference names.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}; expected one of: {expected}")]
pub struct UnknownName {
    /// What was being parsed (`host state`, `task status`, ...).
    pub what: &'static str,
    /// The text that did not match.
    pub name: String,
    /// The accepted names, comma-separated, for the operator.
    pub expected: String,
}

/// Finds the value of `all` whose reference name (its `Display`) equals `name` exactly.
pub(crate) fn parse_name<T: Copy + fmt::Display>(what: &'static str, all: &[T], name: &str) -> Result<T, UnknownName> {
    all.iter().copied().find(|v| v.to_string() == name).ok_or_else(|| UnknownName {
        what,
        name: name.to_owned(),
        expected: all.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
    })
}

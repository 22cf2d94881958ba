//! Subject, stream, bucket and service names. The prefix (default `muster`) is configurable so several muster
//! clusters can share one NATS account.

use crate::HostId;

/// Default subject prefix.
pub const DEFAULT_PREFIX: &str = "muster";

/// Builds every name from one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// Names under `prefix` (one or more tokens, e.g. `muster` or `prod.muster`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.reg.<host>`: registration request/reply.
    pub fn reg(&self, host: &HostId) -> String {
        format!("{}.reg.{host}", self.prefix)
    }
    /// `<prefix>.reg.*`: what the leader subscribes to.
    pub fn reg_all(&self) -> String {
        format!("{}.reg.*", self.prefix)
    }
    /// `<prefix>.hb.<host>`: heartbeats.
    pub fn hb(&self, host: &HostId) -> String {
        format!("{}.hb.{host}", self.prefix)
    }
    /// `<prefix>.hb.*`.
    pub fn hb_all(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }
    /// `<prefix>.cmd.<host>`: commands to one agent (stream `<PREFIX>_COMMANDS`).
    pub fn cmd(&self, host: &HostId) -> String {
        format!("{}.cmd.{host}", self.prefix)
    }
    /// `<prefix>.cmd.*`.
    pub fn cmd_all(&self) -> String {
        format!("{}.cmd.*", self.prefix)
    }
    /// `<prefix>.report.<host>`: reports from one agent (stream `<PREFIX>_REPORTS`).
    pub fn report(&self, host: &HostId) -> String {
        format!("{}.report.{host}", self.prefix)
    }
    /// `<prefix>.report.*`.
    pub fn report_all(&self) -> String {
        format!("{}.report.*", self.prefix)
    }
    /// `<prefix>.txn`: the transaction log subject.
    pub fn txn(&self) -> String {
        format!("{}.txn", self.prefix)
    }
    /// `<prefix>.events.<kind>.<host>`: change feed.
    pub fn event(&self, kind: &str, host: &HostId) -> String {
        format!("{}.events.{kind}.{host}", self.prefix)
    }
    /// `<prefix>.leader.<endpoint>`: write calls, subscribed only by the leader; every instance's API forwards
    /// writes here, so a write reaches the leader whichever instance the caller hit.
    pub fn leader_api(&self, endpoint: &str) -> String {
        format!("{}.leader.{endpoint}", self.prefix)
    }
    /// `<prefix>.servers`: every instance answers (no queue group) with its status, for `muster servers`.
    pub fn servers(&self) -> String {
        format!("{}.servers", self.prefix)
    }
    /// `<prefix>.api`: the services-framework group of the operator API.
    pub fn api_group(&self) -> String {
        format!("{}.api", self.prefix)
    }
    /// `<prefix>.api.<endpoint>`.
    pub fn api(&self, endpoint: &str) -> String {
        format!("{}.api.{endpoint}", self.prefix)
    }

    /// The host token of a subject `<prefix>.<kind>.<host>`, unvalidated; `None` if the subject has another shape.
    pub fn host_token<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')?;
        let (_kind, host) = rest.split_once('.')?;
        (!host.is_empty()).then_some(host)
    }

    /// Stream holding the transaction log.
    pub fn txn_stream(&self) -> String {
        format!("{}_TXN", self.stream_stem())
    }
    /// Stream holding commands.
    pub fn commands_stream(&self) -> String {
        format!("{}_COMMANDS", self.stream_stem())
    }
    /// Stream holding reports.
    pub fn reports_stream(&self) -> String {
        format!("{}_REPORTS", self.stream_stem())
    }
    /// Object store holding state snapshots.
    pub fn snapshot_bucket(&self) -> String {
        format!("{}-snapshots", self.prefix.replace('.', "-"))
    }
    /// KV bucket holding the leader lease.
    pub fn election_bucket(&self) -> String {
        format!("{}-election", self.prefix.replace('.', "-"))
    }

    fn stream_stem(&self) -> String {
        self.prefix.replace('.', "_").to_ascii_uppercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_names_match_the_design() {
        let s = Subjects::default();
        let h = HostId::new("web-1").unwrap();
        assert_eq!(s.reg(&h), "muster.reg.web-1");
        assert_eq!(s.hb(&h), "muster.hb.web-1");
        assert_eq!(s.txn_stream(), "MUSTER_TXN");
        assert_eq!(s.election_bucket(), "muster-election");
        assert_eq!(s.api("hosts"), "muster.api.hosts");
    }

    #[test]
    fn host_token_extracts_the_last_token() {
        let s = Subjects::new("prod.muster");
        assert_eq!(s.host_token("prod.muster.hb.web-1"), Some("web-1"));
        assert_eq!(s.host_token("prod.muster.hb."), None);
        assert_eq!(s.host_token("other.hb.web-1"), None);
    }
}

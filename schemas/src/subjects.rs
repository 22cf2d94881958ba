//! Subject, stream, bucket and service names. The prefix (default `muster`) is configurable so several muster
//! clusters can share one NATS account.

use std::fmt;

use crate::ids::RequestId;
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

    /// Names under `prefix` once it is checked to be one or more dot-separated tokens of `[A-Za-z0-9_-]`, as an
    /// operator's `MUSTER_PREFIX` must be (a `*`, `>` or empty token would make every subject a wildcard or invalid).
    pub fn checked(prefix: &str) -> Result<Self, InvalidPrefix> {
        let bad = |reason: String| Err(InvalidPrefix { prefix: prefix.to_owned(), reason });
        if prefix.is_empty() {
            return bad("the prefix is empty".to_owned());
        }
        for token in prefix.split('.') {
            if token.is_empty() {
                return bad("it has an empty token".to_owned());
            }
            if let Some(c) = token.chars().find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_')) {
                return bad(format!("it contains {c:?}; tokens may hold only letters, digits, '-' and '_'"));
            }
        }
        Ok(Self::new(prefix))
    }

    /// The subject prefix every name starts with (default `muster`; may span tokens, e.g. `prod.muster`).
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
    /// `<prefix>.hb.<host>`: one agent's heartbeats, plain core NATS (no stream).
    pub fn hb(&self, host: &HostId) -> String {
        format!("{}.hb.{host}", self.prefix)
    }
    /// `<prefix>.hb.*`: every host's heartbeats, which every server instance subscribes to.
    pub fn hb_all(&self) -> String {
        format!("{}.hb.*", self.prefix)
    }
    /// `<prefix>.cmd.<host>`: commands to one agent (stream `<PREFIX>_COMMANDS`).
    pub fn cmd(&self, host: &HostId) -> String {
        format!("{}.cmd.{host}", self.prefix)
    }
    /// `<prefix>.cmd.*`: the subjects of stream `<PREFIX>_COMMANDS`; a swarm agent subscribes to it for all its hosts.
    pub fn cmd_all(&self) -> String {
        format!("{}.cmd.*", self.prefix)
    }
    /// `<prefix>.report.<host>`: reports from one agent (stream `<PREFIX>_REPORTS`).
    pub fn report(&self, host: &HostId) -> String {
        format!("{}.report.{host}", self.prefix)
    }
    /// `<prefix>.report.*`: the subjects of stream `<PREFIX>_REPORTS`, and the leader's subscription for early finals.
    pub fn report_all(&self) -> String {
        format!("{}.report.*", self.prefix)
    }
    /// `<prefix>.catchup.<host>`: an agent's catch-up request/reply ([`crate::messages::CatchUpRequest`]), answered
    /// by any server instance with the host's stored commands.
    pub fn catchup(&self, host: &HostId) -> String {
        format!("{}.catchup.{host}", self.prefix)
    }
    /// `<prefix>.catchup.*`: what every server instance subscribes to (one queue group).
    pub fn catchup_all(&self) -> String {
        format!("{}.catchup.*", self.prefix)
    }
    /// `<prefix>.enroll.<host>`: an agent's enrollment request/reply, sent with an enrollment token's credentials
    /// (the enroll role may publish nothing else).
    pub fn enroll(&self, host: &HostId) -> String {
        format!("{}.enroll.{host}", self.prefix)
    }
    /// `<prefix>.enroll.*`: what the leader subscribes to (only the leader answers).
    pub fn enroll_all(&self) -> String {
        format!("{}.enroll.*", self.prefix)
    }
    /// `<prefix>.txn`: the transaction log subject.
    pub fn txn(&self) -> String {
        format!("{}.txn", self.prefix)
    }
    /// `<prefix>.events.host.<host>`: the host's state changes ([`crate::events::HostChanged`]).
    pub fn event_host(&self, host: &HostId) -> String {
        self.event_subject(EventKind::Host, host.as_str())
    }
    /// `<prefix>.events.component.<host>`: state changes of the host's components
    /// ([`crate::events::ComponentChanged`]).
    pub fn event_component(&self, host: &HostId) -> String {
        self.event_subject(EventKind::Component, host.as_str())
    }
    /// `<prefix>.events.task.<host>`: status changes of tasks on the host ([`crate::events::TaskChanged`]).
    pub fn event_task(&self, host: &HostId) -> String {
        self.event_subject(EventKind::Task, host.as_str())
    }
    /// `<prefix>.events.request.<id>`: status changes of one request ([`crate::events::RequestChanged`]); what a
    /// follower of that request subscribes to.
    pub fn event_request(&self, request: RequestId) -> String {
        self.event_subject(EventKind::Request, &request.to_string())
    }
    /// `<prefix>.events.<kind>.*`: every event of one kind.
    pub fn events_of(&self, kind: EventKind) -> String {
        self.event_subject(kind, "*")
    }
    /// `<prefix>.events.>`: the whole change feed.
    pub fn events_all(&self) -> String {
        format!("{}.events.>", self.prefix)
    }
    /// The kind and key (host id or request id, unvalidated) of a change-feed subject; `None` for any other subject.
    pub fn parse_event<'a>(&self, subject: &'a str) -> Option<(EventKind, &'a str)> {
        let rest = self.strip_prefix(subject)?.strip_prefix("events.")?;
        let (kind, key) = rest.split_once('.')?;
        let kind = EventKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
        (!key.is_empty() && !key.contains('.')).then_some((kind, key))
    }
    fn event_subject(&self, kind: EventKind, key: &str) -> String {
        format!("{}.events.{kind}.{key}", self.prefix)
    }
    /// `<prefix>.leader.<endpoint>`: write calls, subscribed only by the leader; every instance's API forwards
    /// writes here, so a write reaches the leader whichever instance the caller hit.
    pub fn leader_api(&self, endpoint: &str) -> String {
        format!("{}.leader.{endpoint}", self.prefix)
    }
    /// `<prefix>.leader.>`: every write endpoint, what the leader subscribes to.
    pub fn leader_all(&self) -> String {
        format!("{}.leader.>", self.prefix)
    }
    /// The endpoint of a `<prefix>.leader.<endpoint>` subject (it may hold dots, e.g. `request.create`).
    pub fn leader_endpoint<'a>(&self, subject: &'a str) -> Option<&'a str> {
        self.strip_prefix(subject)?.strip_prefix("leader.").filter(|e| !e.is_empty())
    }
    /// `<prefix>.servers`: every instance answers (no queue group) with its status, for `muster servers`.
    pub fn servers(&self) -> String {
        format!("{}.servers", self.prefix)
    }
    /// `<prefix>.api`: the services-framework group of the operator API.
    pub fn api_group(&self) -> String {
        format!("{}.api", self.prefix)
    }
    /// `<prefix>.api.<endpoint>`: one API endpoint ([`crate::api::Endpoint::name`]), answered by any instance.
    pub fn api(&self, endpoint: &str) -> String {
        format!("{}.api.{endpoint}", self.prefix)
    }

    /// The host token of a subject `<prefix>.<kind>.<host>`, unvalidated; `None` if the subject has another shape.
    pub fn host_token<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = self.strip_prefix(subject)?;
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
    /// The subjects an agent `host` reads its missed commands through: the direct get of its command subject's
    /// last command (`$JS.API.DIRECT.GET.<PREFIX>_COMMANDS.<prefix>.cmd.<host>`, which names the subject, so it can
    /// be confined to it) and its catch-up request ([`Self::catchup`]), which the servers answer from the stream.
    /// An agent never calls the consumer API: a consumer's body (e.g. its deliver subject) cannot be confined. Its
    /// reports are plain publishes to [`Self::report`]. `host` is a host id, or a template or wildcard when a
    /// permission is written.
    pub fn agent_reads(&self, host: &str) -> [String; 2] {
        [
            format!("$JS.API.DIRECT.GET.{}.{}.cmd.{host}", self.commands_stream(), self.prefix),
            format!("{}.catchup.{host}", self.prefix),
        ]
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

    /// What follows `<prefix>.` in `subject`.
    fn strip_prefix<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject.strip_prefix(self.prefix.as_str())?.strip_prefix('.')
    }

    fn stream_stem(&self) -> String {
        self.prefix.replace('.', "_").to_ascii_uppercase()
    }
}

/// A subject prefix that cannot be used (see [`Subjects::checked`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{prefix:?} is not a subject prefix: {reason}")]
pub struct InvalidPrefix {
    /// The prefix as given.
    pub prefix: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The kinds of change event, the token after `events.` in their subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A host changed state; keyed by host.
    Host,
    /// A host component changed state; keyed by host.
    Component,
    /// A task changed status; keyed by host.
    Task,
    /// A request changed status; keyed by request id.
    Request,
}

impl EventKind {
    /// Every kind; parsing an event subject ([`Subjects::parse_event`]) looks the token after `events.` up here.
    pub const ALL: [Self; 4] = [Self::Host, Self::Component, Self::Task, Self::Request];

    /// The subject token.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Host => "host",
            Self::Component => "component",
            Self::Task => "task",
            Self::Request => "request",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
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
        assert_eq!((s.catchup(&h), s.catchup_all()), ("muster.catchup.web-1".into(), "muster.catchup.*".into()));
        assert_eq!(s.host_token(&s.catchup(&h)), Some("web-1"));
        assert_eq!(
            s.agent_reads("{{name()}}"),
            ["$JS.API.DIRECT.GET.MUSTER_COMMANDS.muster.cmd.{{name()}}", "muster.catchup.{{name()}}"]
        );
        assert_eq!(s.agent_reads(h.as_str())[1], s.catchup(&h));
        assert_eq!((s.enroll(&h), s.enroll_all()), ("muster.enroll.web-1".into(), "muster.enroll.*".into()));
        assert_eq!(s.host_token(&s.enroll(&h)), Some("web-1"));
    }

    #[test]
    fn change_feed_subjects_are_built_and_parsed() {
        let s = Subjects::new("prod.muster");
        let h = HostId::new("web-1").unwrap();
        assert_eq!(s.event_host(&h), "prod.muster.events.host.web-1");
        assert_eq!(s.event_component(&h), "prod.muster.events.component.web-1");
        assert_eq!(s.event_task(&h), "prod.muster.events.task.web-1");
        assert_eq!(s.event_request(12), "prod.muster.events.request.12");
        assert_eq!(s.events_of(EventKind::Task), "prod.muster.events.task.*");
        assert_eq!(s.events_all(), "prod.muster.events.>");
        for kind in EventKind::ALL {
            assert_eq!(s.parse_event(&s.event_subject(kind, "k-1")), Some((kind, "k-1")));
        }
        for bad in [
            "prod.muster.events.node.web-1",
            "prod.muster.events.host.",
            "prod.muster.events.host.a.b",
            "muster.events.host.web-1",
            "prod.muster.hb.web-1",
        ] {
            assert_eq!(s.parse_event(bad), None, "{bad}");
        }
    }

    #[test]
    fn prefixes_are_checked() {
        for good in ["muster", "prod.muster", "a-b_c.d1"] {
            assert_eq!(Subjects::checked(good).map(|s| s.prefix().to_owned()), Ok(good.to_owned()));
        }
        for bad in ["", "a..b", ".a", "a.", "a*", "a.>", "a b"] {
            assert!(Subjects::checked(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn leader_subjects_are_built_and_parsed() {
        let s = Subjects::new("prod.muster");
        assert_eq!(s.leader_all(), "prod.muster.leader.>");
        assert_eq!(s.leader_endpoint(&s.leader_api("request.create")), Some("request.create"));
        assert_eq!(s.leader_endpoint("prod.muster.leader."), None);
        assert_eq!(s.leader_endpoint("muster.leader.stack.apply"), None);
    }

    #[test]
    fn host_token_extracts_the_last_token() {
        let s = Subjects::new("prod.muster");
        assert_eq!(s.host_token("prod.muster.hb.web-1"), Some("web-1"));
        assert_eq!(s.host_token("prod.muster.hb."), None);
        assert_eq!(s.host_token("other.hb.web-1"), None);
    }
}

//! Pure: the identities muster mints and what nats-server lets each publish and subscribe to.
//!
//! Every permission is built from [`Subjects`] (so it follows the prefix) and [`Endpoint`] (so a new read or write
//! endpoint lands on the right side of the viewer line without anyone editing a list). The permissions live in
//! the MUSTER account JWT as the *template* of each role's scoped signing key; a user JWT carries only its name,
//! which nats-server substitutes for [`NAME`] (and the user's public key for [`SUBJECT`]) when the user connects.
//!
//! nats-server (2.10) expands a template only when it is a whole subject token: `P.cmd.{{name()}}` is confined to
//! the host, `catchup-{{name()}}` is not expanded at all (checked against the real server).
//!
//! No agent reaches the JetStream consumer API: a consumer's subject can confine its filter, but not its body — a
//! push consumer's `deliver_subject` may name any subject (`P.txn`), and JetStream publishes there as the account,
//! past every permission. An agent reads its missed commands through a direct get of its own subject's last command
//! and a catch-up request the servers answer ([`Subjects::agent_reads`]).

use std::fmt::Write as _;

use muster_schemas::api::Endpoint;
use muster_schemas::subjects::Subjects;

/// The template nats-server replaces with the user JWT's name (for an agent, its host id).
pub const NAME: &str = "{{name()}}";
/// The template nats-server replaces with the user's public key.
pub const SUBJECT: &str = "{{subject()}}";

/// An identity kind; each has one scoped signing key in the MUSTER account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// One host's agent (the user JWT's name is the host id).
    Agent,
    /// A whole simulated fleet on one connection (load tests only): the agent's rights for every host.
    Swarm,
    /// muster-server: everything in the MUSTER account.
    Server,
    /// An operator: the API, reads and writes, and the change feed.
    Admin,
    /// A read-only operator: the API's reads and the change feed.
    Viewer,
    /// An agent that has only an enrollment token: may ask to be enrolled, nothing else.
    Enroll,
}

impl Role {
    /// Every role, in the order the docs list them.
    pub const ALL: [Role; 6] = [Self::Agent, Self::Swarm, Self::Server, Self::Admin, Self::Viewer, Self::Enroll];

    /// The role's name: the scoped signing key's `role`, file names in the directory, the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Agent => "agent",
            Self::Swarm => "swarm",
            Self::Server => "server",
            Self::Admin => "admin",
            Self::Viewer => "viewer",
            Self::Enroll => "enroll",
        }
    }

    /// What the docs say the role is for.
    pub fn meaning(self) -> &'static str {
        match self {
            Self::Agent => "one host's agent; the user's name is the host id",
            Self::Swarm => "a simulated fleet on one connection (load tests only)",
            Self::Server => "muster-server",
            Self::Admin => "an operator: API reads and writes",
            Self::Viewer => "a read-only operator: API reads",
            Self::Enroll => "an agent holding only an enrollment token",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subjects a role may publish to and subscribe to (nats-server `allow` lists; nothing else is allowed).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    /// Publish allow list.
    pub publish: Vec<String>,
    /// Subscribe allow list.
    pub subscribe: Vec<String>,
}

/// The reply inbox of the connecting user: `_INBOX.<its public key>.>`.
fn own_inbox() -> String {
    format!("_INBOX.{SUBJECT}.>")
}

/// The publish rights of an agent whose host token is `host` (`{{name()}}` for one host, `*` for a swarm): its
/// own protocol subjects, the direct get of its command subject's last command and its catch-up request.
fn agent_publish(s: &Subjects, host: &str) -> Vec<String> {
    let mut publish = vec![
        format!("{}.reg.{host}", s.prefix()),
        format!("{}.hb.{host}", s.prefix()),
        format!("{}.report.{host}", s.prefix()),
    ];
    // The direct get by subject names the host's command subject; the catch-up request is answered by the servers.
    publish.extend(s.agent_reads(host));
    publish
}

/// The subscribe rights of an agent (or a swarm with `host` = `*`): its command subject and its own inbox.
fn agent_subscribe(s: &Subjects, host: &str) -> Vec<String> {
    vec![format!("{}.cmd.{host}", s.prefix()), own_inbox()]
}

/// What an operator (admin or viewer) may subscribe to: the change feed and its own inbox.
fn operator_subscribe(s: &Subjects) -> Vec<String> {
    vec![s.events_all(), own_inbox()]
}

/// What `role` may do under the subjects `s` (templates unexpanded, as they go into the account JWT).
pub fn permissions(role: Role, s: &Subjects) -> Permissions {
    match role {
        Role::Agent => Permissions { publish: agent_publish(s, NAME), subscribe: agent_subscribe(s, NAME) },
        Role::Swarm => Permissions { publish: agent_publish(s, "*"), subscribe: agent_subscribe(s, "*") },
        Role::Server => Permissions { publish: vec![">".to_owned()], subscribe: vec![">".to_owned()] },
        Role::Admin => Permissions {
            publish: vec![format!("{}.>", s.api_group()), s.servers(), "$SRV.>".to_owned()],
            subscribe: operator_subscribe(s),
        },
        Role::Viewer => {
            let mut publish: Vec<String> =
                Endpoint::ALL.into_iter().filter(|e| !e.is_write()).map(|e| s.api(e.name())).collect();
            publish.push(s.servers());
            // The services framework's discovery: `$SRV.PING`, `$SRV.PING.<service>`, `$SRV.PING.<service>.<id>`.
            for verb in ["PING", "INFO", "STATS"] {
                publish.push(format!("$SRV.{verb}"));
                publish.push(format!("$SRV.{verb}.>"));
            }
            Permissions { publish, subscribe: operator_subscribe(s) }
        }
        Role::Enroll => Permissions { publish: vec![s.enroll_all()], subscribe: vec![own_inbox()] },
    }
}

/// The permissions of every role as a markdown table (docs/credentials.md holds it; a test checks that it does).
pub fn markdown_table(s: &Subjects) -> String {
    let mut out = String::from("| role | what for | publish allow | subscribe allow |\n|---|---|---|---|\n");
    let cell = |list: &[String]| list.iter().map(|x| format!("`{x}`")).collect::<Vec<_>>().join("<br>");
    for role in Role::ALL {
        let p = permissions(role, s);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "| {role} | {} | {} | {} |", role.meaning(), cell(&p.publish), cell(&p.subscribe));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_rights_are_confined_to_its_own_subjects() {
        let p = permissions(Role::Agent, &Subjects::default());
        assert_eq!(
            p.publish,
            [
                "muster.reg.{{name()}}",
                "muster.hb.{{name()}}",
                "muster.report.{{name()}}",
                "$JS.API.DIRECT.GET.MUSTER_COMMANDS.muster.cmd.{{name()}}",
                "muster.catchup.{{name()}}",
            ]
        );
        assert_eq!(p.subscribe, ["muster.cmd.{{name()}}", "_INBOX.{{subject()}}.>"]);
    }

    #[test]
    fn no_role_but_the_server_reaches_the_consumer_api() {
        for role in Role::ALL.into_iter().filter(|r| *r != Role::Server) {
            let p = permissions(role, &Subjects::default());
            assert!(
                !p.publish.iter().any(|x| x.starts_with("$JS.API.CONSUMER") || x.starts_with("$JS.API.>")),
                "{role}"
            );
        }
    }

    #[test]
    fn permissions_follow_the_prefix() {
        let p = permissions(Role::Swarm, &Subjects::new("prod.muster"));
        assert!(p.publish.contains(&"prod.muster.hb.*".to_owned()));
        assert!(p.publish.contains(&"$JS.API.DIRECT.GET.PROD_MUSTER_COMMANDS.prod.muster.cmd.*".to_owned()));
        assert!(p.publish.contains(&"prod.muster.catchup.*".to_owned()));
    }

    #[test]
    fn viewer_reaches_every_read_endpoint_and_no_write() {
        let s = Subjects::default();
        let p = permissions(Role::Viewer, &s);
        for e in Endpoint::ALL {
            assert_eq!(p.publish.contains(&s.api(e.name())), !e.is_write(), "{e}");
        }
        assert!(!p.publish.iter().any(|x| x.ends_with('>') && x.starts_with("muster")));
    }

    #[test]
    fn only_the_server_reaches_txn_and_leader_subjects() {
        let s = Subjects::default();
        for role in Role::ALL {
            let p = permissions(role, &s);
            let all: Vec<&String> = p.publish.iter().chain(&p.subscribe).collect();
            let broad = all.iter().any(|x| *x == ">" || *x == "muster.>");
            assert_eq!(broad, role == Role::Server, "{role}");
            assert!(!all.iter().any(|x| x.contains(".txn") || x.contains(".leader.") || x.starts_with("$SYS")));
        }
    }

    #[test]
    fn docs_hold_the_permissions_table() {
        let table = markdown_table(&Subjects::default());
        let docs = include_str!("../../docs/credentials.md");
        assert!(
            docs.contains(&table),
            "docs/credentials.md's permissions table differs from the code; it should read:\n{table}"
        );
    }
}

//! Signed commands: the canonical bytes the server's command key signs, the headers that carry the signature, how
//! long each kind of signed message stays valid, and the reasons an agent refuses one. One place for this wire
//! convention; the cryptography (SHA-256, ed25519 through nkeys) is `muster_security::command`'s.
//!
//! # What is signed
//! Everything the server sends an agent that makes it act: every command on `<prefix>.cmd.<host>` (execute, cancel,
//! configure) and the accepted registration reply, whose component set carries the status and start scripts the
//! agent runs. The signature covers [`SignedFields::signed_bytes`], a short text (readable in a debugger, and
//! unambiguous: every value is a number, a fixed word, or a [`HostId`], which holds no line break):
//!
//! ```text
//! muster-signed-v1
//! kind=execute                 execute | cancel | configure | registration
//! host=web-1
//! task=42-a2                   the task attempt of an execute or cancel, "-" otherwise
//! epoch=7
//! issued=1700000000000         unix ms
//! expires=1700000072000        unix ms
//! body-sha256=<64 lowercase hex digits of the SHA-256 of the message body, exactly as sent>
//! ```
//!
//! Why each field is covered:
//! - **kind**: a signature made for one kind of message cannot be presented as another (a registration reply's
//!   bytes as a command).
//! - **host**: a genuine command republished on another host's subject is refused there (the agent checks the
//!   signed host against its own); without it, one host's commands — and secrets in their `env` — could be run
//!   on every host.
//! - **task** (task and attempt): the unit of replay memory; an agent remembers the attempts it accepted until
//!   their expiry and runs none twice.
//! - **epoch**: names the leader term that issued it; a configure of a newer term always wins over an older one's
//!   whatever the two servers' clocks say.
//! - **issued**: orders configures within a term (an older component set is never applied over a newer one).
//! - **expires**: a captured command is worthless after it; it also bounds how long an agent must remember what
//!   it accepted.
//! - **body-sha256**: the body (argv, env, timeout, component scripts, the registration's cursor) cannot be
//!   changed by one byte without the signature failing.
//!
//! # Headers
//! The signature travels in headers, so `nats sub` shows who signed what without decoding the body:
//! [`SIGNER`] (the command key's public key, `N…`), [`SIGNATURE`] (base64url, no padding), [`ISSUED`], [`EXPIRES`]
//! and [`crate::headers::EPOCH`]. Kind, host and task are taken from the body, which the agent decodes (with its
//! size limit) before checking the signature.
//!
//! # Expiry
//! - an execution: its task's deadline, `issued + spec.timeout_ms + task grace` (the server's `task_grace_ms`,
//!   after which the leader cancels and re-sends the task anyway);
//! - a cancel: [`CANCEL_VALIDITY_MS`]; a configure: [`CONFIGURE_VALIDITY_MS`]; a registration reply:
//!   [`REGISTRATION_VALIDITY_MS`].
//!
//! Agents accept a message until `expires + `[`CLOCK_LEEWAY_MS`] by their own clock (agent and server clocks are
//! expected to agree within it; the agent warns at registration when they differ by more than a minute).

use std::fmt;

pub use crate::commands::RefusalReason;
use crate::commands::{Command, CommandBody};
use crate::headers::{Header, EPOCH};
use crate::ids::TaskAttempt;
use crate::{HostId, UnixMillis};

/// The public key (nkeys, `N…`) of the command key that signed the message.
pub const SIGNER: &str = "Muster-Signer";
/// The ed25519 signature of [`SignedFields::signed_bytes`], base64url without padding.
pub const SIGNATURE: &str = "Muster-Signature";
/// When the server signed the message (unix ms).
pub const ISSUED: &str = "Muster-Issued";
/// Until when an agent may act on the message (unix ms).
pub const EXPIRES: &str = "Muster-Expires";

/// First line of the signed bytes: names this layout, so a later one can never be confused with it.
pub const LAYOUT: &str = "muster-signed-v1";

/// How long a cancel stays valid. Longer than any wait for a catch-up worth doing: a cancel matters only while its
/// execution may still run, and an execution whose task is cancelled is also finished in the host's command cursor.
pub const CANCEL_VALIDITY_MS: u64 = 60 * 60 * 1000;
/// How long a configure stays valid. A newer configure or registration reply replaces it anyway; the bound only
/// limits how long a captured one can be presented again.
pub const CONFIGURE_VALIDITY_MS: u64 = 60 * 60 * 1000;
/// How long a registration reply stays valid: it answers a request the agent is waiting on right now (the leeway
/// and a slow leader are covered).
pub const REGISTRATION_VALIDITY_MS: u64 = 60 * 1000;
/// How far past `expires` an agent still accepts a message: the clock difference tolerated between agent and
/// server.
pub const CLOCK_LEEWAY_MS: u64 = 2_000;

/// What a signed message is, the `kind=` line of the signed bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignedKind {
    /// An `Execute` command.
    Execute,
    /// A `Cancel` command.
    Cancel,
    /// A `Configure` command.
    Configure,
    /// An accepted registration reply (its component set and catch-up cursor).
    Registration,
}

impl SignedKind {
    /// The word in the signed bytes.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Execute => "execute",
            Self::Cancel => "cancel",
            Self::Configure => "configure",
            Self::Registration => "registration",
        }
    }

    /// The kind of a command body.
    pub fn of(body: &CommandBody) -> Self {
        match body {
            CommandBody::Execute(_) => Self::Execute,
            CommandBody::Cancel { .. } => Self::Cancel,
            CommandBody::Configure { .. } => Self::Configure,
        }
    }
}

impl fmt::Display for SignedKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Everything a signature covers besides the body's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedFields {
    /// What the message is.
    pub kind: SignedKind,
    /// The one host that may act on it.
    pub host: HostId,
    /// The task attempt of an execute or cancel; `None` for configures and registration replies.
    pub task: Option<TaskAttempt>,
    /// The epoch of the leader that issued it.
    pub epoch: u64,
    /// When it was signed (unix ms).
    pub issued: UnixMillis,
    /// Until when it may be acted on (unix ms).
    pub expires: UnixMillis,
}

impl SignedFields {
    /// The fields of `command` as issued by the leader of `epoch` at `issued`, valid until `expires`.
    pub fn command(command: &Command, epoch: u64, issued: UnixMillis, expires: UnixMillis) -> Self {
        let task = match &command.body {
            CommandBody::Execute(e) => Some(TaskAttempt { task: e.task, attempt: e.attempt }),
            CommandBody::Cancel { task, attempt } => Some(TaskAttempt { task: *task, attempt: *attempt }),
            CommandBody::Configure { .. } => None,
        };
        Self { kind: SignedKind::of(&command.body), host: command.host.clone(), task, epoch, issued, expires }
    }

    /// The fields of `command` signed now by the leader of `epoch`: expiring per [`command_expiry`].
    pub fn issue_command(command: &Command, epoch: u64, issued: UnixMillis, task_grace_ms: u64) -> Self {
        Self::command(command, epoch, issued, command_expiry(&command.body, issued, task_grace_ms))
    }

    /// The fields of an accepted registration reply to `host`, signed at `issued` by the leader of `epoch`.
    pub fn registration(host: &HostId, epoch: u64, issued: UnixMillis) -> Self {
        Self {
            kind: SignedKind::Registration,
            host: host.clone(),
            task: None,
            epoch,
            issued,
            expires: issued.saturating_add(REGISTRATION_VALIDITY_MS),
        }
    }

    /// The canonical bytes the signature covers (layout in the module doc), given the SHA-256 of the body.
    pub fn signed_bytes(&self, body_sha256: &[u8; 32]) -> Vec<u8> {
        use fmt::Write as _;
        let mut s = String::with_capacity(256);
        let task = self.task.map_or_else(|| "-".to_owned(), |t| t.to_string());
        // Writing to a String cannot fail.
        let _ = write!(
            s,
            "{LAYOUT}\nkind={}\nhost={}\ntask={task}\nepoch={}\nissued={}\nexpires={}\nbody-sha256=",
            self.kind, self.host, self.epoch, self.issued, self.expires
        );
        for b in body_sha256 {
            let _ = write!(s, "{b:02x}");
        }
        s.push('\n');
        s.into_bytes()
    }

    /// The signature's headers: [`SIGNER`], [`SIGNATURE`], [`ISSUED`], [`EXPIRES`] and `Muster-Epoch`.
    pub fn headers(&self, signer: &str, signature: &str) -> Vec<Header> {
        vec![
            (SIGNER, signer.to_owned()),
            (SIGNATURE, signature.to_owned()),
            (ISSUED, self.issued.to_string()),
            (EXPIRES, self.expires.to_string()),
            (EPOCH, self.epoch.to_string()),
        ]
    }
}

/// Until when a command issued at `issued` may be acted on: an execution until its task's deadline (`issued +
/// timeout + task_grace_ms`, when the leader gives up on the attempt), a cancel or configure for their documented
/// bound.
pub fn command_expiry(body: &CommandBody, issued: UnixMillis, task_grace_ms: u64) -> UnixMillis {
    match body {
        CommandBody::Execute(e) => issued.saturating_add(e.spec.timeout_ms).saturating_add(task_grace_ms),
        CommandBody::Cancel { .. } => issued.saturating_add(CANCEL_VALIDITY_MS),
        CommandBody::Configure { .. } => issued.saturating_add(CONFIGURE_VALIDITY_MS),
    }
}

/// The signature headers of a received message, as text, before any check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SignatureHeaders<'a> {
    /// [`SIGNER`].
    pub signer: Option<&'a str>,
    /// [`SIGNATURE`].
    pub signature: Option<&'a str>,
    /// `Muster-Epoch`.
    pub epoch: Option<&'a str>,
    /// [`ISSUED`].
    pub issued: Option<&'a str>,
    /// [`EXPIRES`].
    pub expires: Option<&'a str>,
}

impl<'a> SignatureHeaders<'a> {
    /// Reads the headers through `get` (a header map's lookup by name).
    pub fn read(get: impl Fn(&str) -> Option<&'a str>) -> Self {
        Self {
            signer: get(SIGNER),
            signature: get(SIGNATURE),
            epoch: get(EPOCH),
            issued: get(ISSUED),
            expires: get(EXPIRES),
        }
    }

    /// Whether the message carries no signature at all.
    pub fn is_unsigned(&self) -> bool {
        self.signer.is_none() && self.signature.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{CommandSpec, Execution, RoleCommand};
    use crate::PROTOCOL_VERSION;

    fn execute(timeout_ms: u64) -> Command {
        Command {
            schema: PROTOCOL_VERSION,
            host: HostId::new("web-1").unwrap(),
            body: CommandBody::Execute(Execution {
                task: 42,
                attempt: 2,
                request: 1,
                component: None,
                command: RoleCommand::Run,
                spec: CommandSpec { argv: vec!["true".into()], env: Default::default(), timeout_ms },
            }),
        }
    }

    #[test]
    fn the_signed_bytes_have_the_documented_layout() {
        let f = SignedFields::issue_command(&execute(60_000), 7, 1_000, 10_000);
        assert_eq!(f.expires, 71_000, "an execution expires at its task's deadline");
        let bytes = String::from_utf8(f.signed_bytes(&[0xab; 32])).unwrap();
        let expected = format!(
            "muster-signed-v1\nkind=execute\nhost=web-1\ntask=42-a2\nepoch=7\nissued=1000\nexpires=71000\n\
             body-sha256={}\n",
            "ab".repeat(32)
        );
        assert_eq!(bytes, expected);
        let reg = SignedFields::registration(&HostId::new("web-1").unwrap(), 7, 1_000);
        let text = String::from_utf8(reg.signed_bytes(&[0; 32])).unwrap();
        assert!(text.contains("\nkind=registration\n") && text.contains("\ntask=-\n"), "{text}");
        assert_eq!(reg.expires, 1_000 + REGISTRATION_VALIDITY_MS);
    }

    #[test]
    fn every_field_changes_the_signed_bytes() {
        let base = SignedFields::issue_command(&execute(1_000), 7, 1_000, 0);
        let digest = [1; 32];
        let mut variants = vec![];
        let mut f = base.clone();
        f.kind = SignedKind::Cancel;
        variants.push(f);
        let mut f = base.clone();
        f.host = HostId::new("web-2").unwrap();
        variants.push(f);
        let mut f = base.clone();
        f.task = Some(TaskAttempt { task: 42, attempt: 3 });
        variants.push(f);
        let mut f = base.clone();
        f.epoch = 8;
        variants.push(f);
        let mut f = base.clone();
        f.issued += 1;
        variants.push(f);
        let mut f = base.clone();
        f.expires += 1;
        variants.push(f);
        for v in variants {
            assert_ne!(v.signed_bytes(&digest), base.signed_bytes(&digest), "{v:?}");
        }
        assert_ne!(base.signed_bytes(&[2; 32]), base.signed_bytes(&digest));
    }

    #[test]
    fn cancels_and_configures_expire_after_their_bound() {
        let body = CommandBody::Cancel { task: 1, attempt: 1 };
        assert_eq!(command_expiry(&body, 5, 10_000), 5 + CANCEL_VALIDITY_MS);
        let body = CommandBody::Configure { components: vec![] };
        assert_eq!(command_expiry(&body, 5, 10_000), 5 + CONFIGURE_VALIDITY_MS);
    }

    #[test]
    fn headers_round_trip_and_reasons_parse() {
        let f = SignedFields::registration(&HostId::new("h").unwrap(), 3, 10);
        let h = f.headers("NABC", "c2ln");
        let read = SignatureHeaders::read(|name| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()));
        assert_eq!(read.signer, Some("NABC"));
        assert_eq!(read.signature, Some("c2ln"));
        assert_eq!((read.epoch, read.issued, read.expires), (Some("3"), Some("10"), Some("60010")));
        assert!(!read.is_unsigned());
        assert!(SignatureHeaders::default().is_unsigned());
        for r in RefusalReason::ALL {
            assert_eq!(r.as_str().parse::<RefusalReason>(), Ok(r));
        }
        assert!("nope".parse::<RefusalReason>().is_err());
    }
}

//! Signed commands, the crypto half: [`CommandSigner`] (the server's command key) signs what the server sends an
//! agent to act on; [`CommandVerifier`] (the agent's pinned public keys, a list so a key can be rotated) checks it,
//! and [`ReplayGuard`] remembers what an agent accepted until it expires. The bytes signed and the headers they
//! travel in are `muster_schemas::signing`'s (one place for the wire convention, and why each field is covered).
//!
//! Pure: no I/O except reading a seed file, time passed in. ed25519 through `nkeys` (a "server" nkey: public key
//! `N…`, seed `SN…`), SHA-256 through `sha2`; nothing hand-rolled.
//!
//! Checks, in this order, each a typed [`Refusal`]: signature headers present ([`Refusal::Unsigned`]) and well-formed
//! ([`Refusal::Malformed`]); signer pinned ([`Refusal::UntrustedKey`]); signature matches the fields and body
//! ([`Refusal::BadSignature`]); signed for this host ([`Refusal::OtherHost`]); not expired ([`Refusal::Expired`]);
//! not accepted before ([`Refusal::Replayed`], [`ReplayGuard`]). The signature is checked before anything the
//! message claims is believed, so a forgery for another host is a bad signature or an untrusted key, never
//! "another host", and a forgery never enters the replay memory.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use muster_schemas::headers::Header;
use muster_schemas::ids::TaskAttempt;
use muster_schemas::signing::{RefusalReason, SignatureHeaders, SignedFields, SignedKind, CLOCK_LEEWAY_MS};
use muster_schemas::{HostId, UnixMillis};
use nkeys::{KeyPair, KeyPairType};
use sha2::{Digest as _, Sha256};

/// Task attempts a [`ReplayGuard`] remembers at most. Each is forgotten at its expiry; past this many unexpired
/// ones (a host sent more than this within one task timeout), the one expiring soonest is forgotten first.
pub const REPLAY_CAPACITY: usize = 100_000;

/// Length of an ed25519 signature.
const SIGNATURE_LEN: usize = 64;

/// A command key or trusted-key list that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The seed file could not be read.
    #[error("cannot read the command key {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// Not an nkeys seed or public key.
    #[error("invalid command key {what}: {reason}")]
    Invalid {
        /// Which key (a public key, or "seed").
        what: String,
        /// nkeys' explanation.
        reason: String,
    },
    /// A valid nkey of another kind (a user or account key): command keys are "server" keys (`N…`, seed `SN…`).
    #[error("command key {what} is a {kind:?} key; a command key is a server nkey (public N…, seed SN…)")]
    WrongKind {
        /// Which key.
        what: String,
        /// Its kind.
        kind: KeyPairType,
    },
}

/// Why an agent refuses a message that claims to come from the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No signature headers at all.
    #[error("unsigned")]
    Unsigned,
    /// The signer is trusted but the signature does not match the fields and body (tampered).
    #[error("the signature of {signer} does not match the message")]
    BadSignature {
        /// The claimed signer's public key.
        signer: String,
    },
    /// Signed by a key that is not pinned.
    #[error("signed by {signer}, which is not a trusted command key")]
    UntrustedKey {
        /// The signer's public key, as claimed.
        signer: String,
    },
    /// Genuinely signed, for another host.
    #[error("signed for host {signed}, not this host {own}")]
    OtherHost {
        /// The host it was signed for.
        signed: HostId,
        /// This host.
        own: HostId,
    },
    /// Genuinely signed, but past its expiry.
    #[error("expired at {expires} (now {now}, unix ms)")]
    Expired {
        /// Its expiry.
        expires: UnixMillis,
        /// The agent's clock.
        now: UnixMillis,
    },
    /// Genuinely signed, but already accepted (an execute or cancel), or older than the configure applied.
    #[error("replayed: {what}")]
    Replayed {
        /// What was seen before.
        what: String,
    },
    /// Signature headers present but unusable (a number that does not parse, a signature of the wrong size).
    #[error("malformed signature: {0}")]
    Malformed(String),
}

impl Refusal {
    /// The reason, as reported to the server and counted.
    pub fn reason(&self) -> RefusalReason {
        match self {
            Self::Unsigned => RefusalReason::Unsigned,
            Self::BadSignature { .. } => RefusalReason::BadSignature,
            Self::UntrustedKey { .. } => RefusalReason::UntrustedKey,
            Self::OtherHost { .. } => RefusalReason::OtherHost,
            Self::Expired { .. } => RefusalReason::Expired,
            Self::Replayed { .. } => RefusalReason::Replayed,
            Self::Malformed(_) => RefusalReason::Malformed,
        }
    }
}

/// The SHA-256 of a message body, as the signed bytes carry it.
pub fn body_sha256(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

/// The server's command key: signs commands and registration replies.
pub struct CommandSigner {
    key: KeyPair,
    public: String,
}

impl std::fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("CommandSigner").field("public", &self.public).finish()
    }
}

impl CommandSigner {
    /// A new random command key (tests and `muster security init`).
    pub fn generate() -> Self {
        let key = KeyPair::new_server();
        let public = key.public_key();
        Self { key, public }
    }

    /// The key of an nkeys seed (`SN…`), which must be a server key.
    pub fn from_seed(seed: &str) -> Result<Self, KeyError> {
        let key = KeyPair::from_seed(seed.trim())
            .map_err(|e| KeyError::Invalid { what: "seed".into(), reason: e.to_string() })?;
        if key.key_pair_type() != KeyPairType::Server {
            return Err(KeyError::WrongKind { what: "seed".into(), kind: key.key_pair_type() });
        }
        let public = key.public_key();
        Ok(Self { key, public })
    }

    /// The key in a seed file: its first line that is neither empty nor a `#` comment.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyError::Read { path: path.display().to_string(), source })?;
        let seed = text.lines().map(str::trim).find(|l| !l.is_empty() && !l.starts_with('#')).unwrap_or_default();
        Self::from_seed(seed)
    }

    /// The seed (`SN…`), to write a key file.
    pub fn seed(&self) -> String {
        // A key made from a seed or generated always has one.
        self.key.seed().unwrap_or_default()
    }

    /// The public key (`N…`) agents pin.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Signs `fields` and `body` (the message body exactly as it will be sent): the headers to add to the message.
    pub fn sign(&self, fields: &SignedFields, body: &[u8]) -> Vec<Header> {
        let bytes = fields.signed_bytes(&body_sha256(body));
        // nkeys fails to sign only for a public-only key pair, which a signer never holds.
        let signature = self.key.sign(&bytes).unwrap_or_default();
        fields.headers(&self.public, &URL_SAFE_NO_PAD.encode(signature))
    }
}

/// The signature headers of a received message, parsed: what the check needs besides the fields from the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The claimed signer's public key.
    pub signer: String,
    /// The signature.
    pub signature: Vec<u8>,
    /// The issuing leader's epoch.
    pub epoch: u64,
    /// When it was signed.
    pub issued: UnixMillis,
    /// Until when it may be acted on.
    pub expires: UnixMillis,
}

impl Stamp {
    /// Parses the signature headers: [`Refusal::Unsigned`] without any, [`Refusal::Malformed`] when one is
    /// missing or does not parse.
    pub fn parse(h: &SignatureHeaders<'_>) -> Result<Self, Refusal> {
        if h.is_unsigned() {
            return Err(Refusal::Unsigned);
        }
        let missing = |name: &str| Refusal::Malformed(format!("no {name} header"));
        let number = |name: &str, v: Option<&str>| -> Result<u64, Refusal> {
            let v = v.ok_or_else(|| missing(name))?;
            v.parse().map_err(|_| Refusal::Malformed(format!("{name} {v:?} is not a number")))
        };
        let signer = h.signer.ok_or_else(|| missing("signer"))?;
        let signature = h.signature.ok_or_else(|| missing("signature"))?;
        let signature = URL_SAFE_NO_PAD.decode(signature).map_err(|e| Refusal::Malformed(format!("signature: {e}")))?;
        if signature.len() != SIGNATURE_LEN {
            return Err(Refusal::Malformed(format!("signature of {} bytes", signature.len())));
        }
        Ok(Self {
            signer: bounded(signer),
            signature,
            epoch: number("epoch", h.epoch)?,
            issued: number("issued", h.issued)?,
            expires: number("expires", h.expires)?,
        })
    }
}

/// A claimed signer as it may be logged and reported: at most one public key's length, printable.
fn bounded(s: &str) -> String {
    s.chars().take(64).map(|c| if c.is_ascii_graphic() { c } else { '?' }).collect()
}

/// The command keys an agent trusts (pinned public keys, several during a rotation).
pub struct CommandVerifier {
    keys: Vec<(String, KeyPair)>,
}

impl std::fmt::Debug for CommandVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter().map(|(k, _)| k)).finish()
    }
}

impl CommandVerifier {
    /// Trusts `keys` (public server nkeys, `N…`).
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> Result<Self, KeyError> {
        let mut trusted = Vec::new();
        for k in keys {
            let k = k.as_ref().trim();
            let pair = KeyPair::from_public_key(k)
                .map_err(|e| KeyError::Invalid { what: bounded(k), reason: e.to_string() })?;
            if pair.key_pair_type() != KeyPairType::Server {
                return Err(KeyError::WrongKind { what: bounded(k), kind: pair.key_pair_type() });
            }
            if !trusted.iter().any(|(t, _): &(String, KeyPair)| t == k) {
                trusted.push((k.to_owned(), pair));
            }
        }
        Ok(Self { keys: trusted })
    }

    /// Trusts the keys listed in `text`: separated by commas or line breaks; blanks and `#` comments ignored.
    pub fn parse_list(text: &str) -> Result<Self, KeyError> {
        let keys = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or_default())
            .flat_map(|l| l.split(','))
            .map(str::trim)
            .filter(|k| !k.is_empty());
        Self::new(keys)
    }

    /// Whether no key is trusted (every message is then refused).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The trusted public keys.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(k, _)| k.as_str())
    }

    /// Checks a message's signature: `stamp` parsed from its headers, `fields` built from its decoded body and the
    /// stamp, `body` as received; then that it was signed for `own` and has not expired at `now`. Stateless: the
    /// caller then asks its [`ReplayGuard`].
    pub fn verify(
        &self,
        stamp: &Stamp,
        fields: &SignedFields,
        body: &[u8],
        own: &HostId,
        now: UnixMillis,
    ) -> Result<(), Refusal> {
        let Some((_, key)) = self.keys.iter().find(|(k, _)| *k == stamp.signer) else {
            return Err(Refusal::UntrustedKey { signer: stamp.signer.clone() });
        };
        let bytes = fields.signed_bytes(&body_sha256(body));
        if key.verify(&bytes, &stamp.signature).is_err() {
            return Err(Refusal::BadSignature { signer: stamp.signer.clone() });
        }
        if &fields.host != own {
            return Err(Refusal::OtherHost { signed: fields.host.clone(), own: own.clone() });
        }
        if now > fields.expires.saturating_add(CLOCK_LEEWAY_MS) {
            return Err(Refusal::Expired { expires: fields.expires, now });
        }
        Ok(())
    }
}

/// What one agent session accepted, so nothing is accepted twice: the executes and cancels it accepted, each until
/// its expiry, and the (epoch, issue time) of the newest component set (a configure or registration reply).
///
/// Memory is bounded: an entry is forgotten once it has expired (a replay is then refused as expired), and at most
/// [`REPLAY_CAPACITY`] are kept (beyond, the one expiring soonest goes first).
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<(bool, TaskAttempt), UnixMillis>,
    by_expiry: BinaryHeap<Reverse<(UnixMillis, bool, TaskAttempt)>>,
    newest_components: Option<(u64, UnixMillis)>,
    capacity: Option<usize>,
}

impl ReplayGuard {
    /// A guard keeping at most `capacity` task attempts (the default is [`REPLAY_CAPACITY`]).
    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity: Some(capacity.max(1)), ..Self::default() }
    }

    /// Admits a verified message at `now`, or refuses it as [`Refusal::Replayed`]: an execute or cancel whose task
    /// attempt was admitted before (and has not expired), a configure or registration reply older (by epoch, then
    /// issue time) than the newest admitted. Call only after [`CommandVerifier::verify`] succeeded.
    pub fn admit(&mut self, fields: &SignedFields, now: UnixMillis) -> Result<(), Refusal> {
        self.forget_expired(now);
        match (fields.kind, fields.task) {
            (SignedKind::Execute | SignedKind::Cancel, Some(task)) => {
                let key = (fields.kind == SignedKind::Execute, task);
                if self.seen.contains_key(&key) {
                    return Err(Refusal::Replayed { what: format!("{} of task {task} already accepted", fields.kind) });
                }
                let forget_at = fields.expires.saturating_add(CLOCK_LEEWAY_MS);
                if self.seen.len() >= self.capacity.unwrap_or(REPLAY_CAPACITY) {
                    if let Some(Reverse((_, execute, task))) = self.by_expiry.pop() {
                        self.seen.remove(&(execute, task));
                    }
                }
                self.seen.insert(key, forget_at);
                self.by_expiry.push(Reverse((forget_at, key.0, task)));
                Ok(())
            }
            (SignedKind::Execute | SignedKind::Cancel, None) => {
                Err(Refusal::Malformed(format!("{} without a task", fields.kind)))
            }
            (SignedKind::Configure | SignedKind::Registration, _) => {
                let stamp = (fields.epoch, fields.issued);
                if let Some(newest) = self.newest_components.filter(|newest| stamp < *newest) {
                    return Err(Refusal::Replayed {
                        what: format!(
                            "{} issued at {} in epoch {}, older than the component set applied (epoch {}, issued at {})",
                            fields.kind, fields.issued, fields.epoch, newest.0, newest.1
                        ),
                    });
                }
                self.newest_components = Some(stamp);
                Ok(())
            }
        }
    }

    fn forget_expired(&mut self, now: UnixMillis) {
        while let Some(Reverse((forget_at, execute, task))) = self.by_expiry.peek().copied() {
            if forget_at >= now {
                break;
            }
            self.by_expiry.pop();
            self.seen.remove(&(execute, task));
        }
    }

    /// Task attempts remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no task attempt is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::commands::{Command, CommandBody, CommandSpec, Execution, RoleCommand};
    use muster_schemas::{encode, PROTOCOL_VERSION};

    const NOW: UnixMillis = 1_700_000_000_000;
    const GRACE: u64 = 10_000;

    fn host(h: &str) -> HostId {
        HostId::new(h).unwrap()
    }

    fn execute(to: &str, argv: &[&str]) -> Command {
        Command {
            schema: PROTOCOL_VERSION,
            host: host(to),
            body: CommandBody::Execute(Execution {
                task: 42,
                attempt: 1,
                request: 7,
                component: None,
                command: RoleCommand::Run,
                spec: CommandSpec {
                    argv: argv.iter().map(|s| s.to_string()).collect(),
                    env: Default::default(),
                    timeout_ms: 60_000,
                },
            }),
        }
    }

    /// A message as it travels: body bytes and headers.
    struct Wire {
        body: Vec<u8>,
        headers: Vec<Header>,
    }

    fn sign(signer: &CommandSigner, command: &Command, issued: UnixMillis) -> Wire {
        let body = encode(command);
        let fields = SignedFields::issue_command(command, 3, issued, GRACE);
        Wire { headers: signer.sign(&fields, &body), body }
    }

    fn get<'a>(h: &'a [Header], name: &str) -> Option<&'a str> {
        h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }

    /// What the agent does: parse the stamp, decode the body, build the fields, verify, admit.
    fn check(
        verifier: &CommandVerifier,
        guard: &mut ReplayGuard,
        wire: &Wire,
        own: &str,
        now: UnixMillis,
    ) -> Result<Command, Refusal> {
        let stamp = Stamp::parse(&SignatureHeaders::read(|n| get(&wire.headers, n)))?;
        let command: Command = muster_schemas::decode(&wire.body, 1 << 20).unwrap();
        let fields = SignedFields::command(&command, stamp.epoch, stamp.issued, stamp.expires);
        verifier.verify(&stamp, &fields, &wire.body, &host(own), now)?;
        guard.admit(&fields, now)?;
        Ok(command)
    }

    fn setup() -> (CommandSigner, CommandVerifier) {
        let signer = CommandSigner::generate();
        let verifier = CommandVerifier::new([signer.public_key()]).unwrap();
        (signer, verifier)
    }

    #[test]
    fn a_genuine_command_is_accepted_once() {
        let (signer, verifier) = setup();
        assert!(signer.public_key().starts_with('N'));
        let wire = sign(&signer, &execute("web-1", &["true"]), NOW);
        let mut guard = ReplayGuard::default();
        assert_eq!(check(&verifier, &mut guard, &wire, "web-1", NOW + 5).unwrap(), execute("web-1", &["true"]));
        let again = check(&verifier, &mut guard, &wire, "web-1", NOW + 6).unwrap_err();
        assert_eq!(again.reason(), RefusalReason::Replayed, "{again}");
    }

    #[test]
    fn unsigned_and_malformed_headers_are_refused() {
        let (signer, verifier) = setup();
        let mut wire = sign(&signer, &execute("web-1", &["true"]), NOW);
        let signed = wire.headers.clone();
        wire.headers.clear();
        let mut guard = ReplayGuard::default();
        assert_eq!(check(&verifier, &mut guard, &wire, "web-1", NOW), Err(Refusal::Unsigned));
        for (name, value) in [
            ("Muster-Signature", "not base64!"),
            ("Muster-Signature", "c2hvcnQ"),
            ("Muster-Issued", "soon"),
            ("Muster-Expires", "-1"),
            ("Muster-Epoch", ""),
        ] {
            wire.headers =
                signed.iter().map(|(n, v)| (*n, if *n == name { value.into() } else { v.clone() })).collect();
            let r = check(&verifier, &mut guard, &wire, "web-1", NOW).unwrap_err();
            assert_eq!(r.reason(), RefusalReason::Malformed, "{name}={value}: {r}");
        }
        wire.headers = signed.into_iter().filter(|(n, _)| *n != "Muster-Expires").collect();
        assert_eq!(check(&verifier, &mut guard, &wire, "web-1", NOW).unwrap_err().reason(), RefusalReason::Malformed);
    }

    #[test]
    fn a_tampered_argv_breaks_the_signature() {
        let (signer, verifier) = setup();
        let mut wire = sign(&signer, &execute("web-1", &["sh", "-c", "id"]), NOW);
        // Flip one byte of the argv inside the encoded body: "id" becomes "ie".
        let at = wire.body.windows(2).position(|w| w == b"id").unwrap();
        wire.body[at + 1] = b'e';
        let mut guard = ReplayGuard::default();
        let r = check(&verifier, &mut guard, &wire, "web-1", NOW).unwrap_err();
        assert_eq!(r, Refusal::BadSignature { signer: signer.public_key().to_owned() });
        assert!(guard.is_empty(), "a refused message is not remembered");
    }

    #[test]
    fn a_tampered_header_breaks_the_signature() {
        let (signer, verifier) = setup();
        let wire = sign(&signer, &execute("web-1", &["true"]), NOW);
        for name in ["Muster-Expires", "Muster-Issued", "Muster-Epoch"] {
            let headers = wire
                .headers
                .iter()
                .map(|(n, v)| (*n, if *n == name { (v.parse::<u64>().unwrap() + 1).to_string() } else { v.clone() }))
                .collect();
            let tampered = Wire { body: wire.body.clone(), headers };
            let r = check(&verifier, &mut ReplayGuard::default(), &tampered, "web-1", NOW).unwrap_err();
            assert_eq!(r.reason(), RefusalReason::BadSignature, "{name}");
        }
    }

    #[test]
    fn another_key_is_untrusted_even_when_its_signature_is_valid() {
        let (_, verifier) = setup();
        let forger = CommandSigner::generate();
        let wire = sign(&forger, &execute("web-1", &["true"]), NOW);
        let r = check(&verifier, &mut ReplayGuard::default(), &wire, "web-1", NOW).unwrap_err();
        assert_eq!(r, Refusal::UntrustedKey { signer: forger.public_key().to_owned() });
        // A forger claiming the trusted key's name cannot produce its signature.
        let (signer, verifier) = setup();
        let mut wire = sign(&forger, &execute("web-1", &["true"]), NOW);
        for (n, v) in &mut wire.headers {
            if *n == "Muster-Signer" {
                *v = signer.public_key().to_owned();
            }
        }
        let r = check(&verifier, &mut ReplayGuard::default(), &wire, "web-1", NOW).unwrap_err();
        assert_eq!(r.reason(), RefusalReason::BadSignature);
    }

    #[test]
    fn a_genuine_command_for_another_host_is_refused() {
        let (signer, verifier) = setup();
        let wire = sign(&signer, &execute("web-1", &["true"]), NOW);
        let r = check(&verifier, &mut ReplayGuard::default(), &wire, "web-2", NOW).unwrap_err();
        assert_eq!(r, Refusal::OtherHost { signed: host("web-1"), own: host("web-2") });
    }

    #[test]
    fn a_command_past_its_expiry_is_refused() {
        let (signer, verifier) = setup();
        let wire = sign(&signer, &execute("web-1", &["true"]), NOW);
        // Expiry = issued + timeout (60 s) + grace (10 s); accepted up to the clock leeway after it.
        let expires = NOW + 70_000;
        assert_eq!(get(&wire.headers, "Muster-Expires"), Some(expires.to_string().as_str()));
        let late = expires + CLOCK_LEEWAY_MS + 1;
        let r = check(&verifier, &mut ReplayGuard::default(), &wire, "web-1", late).unwrap_err();
        assert_eq!(r, Refusal::Expired { expires, now: late });
        assert!(check(&verifier, &mut ReplayGuard::default(), &wire, "web-1", expires + CLOCK_LEEWAY_MS).is_ok());
    }

    #[test]
    fn rotation_trusts_every_listed_key() {
        let (old, new) = (CommandSigner::generate(), CommandSigner::generate());
        let list = format!("# rotated in March\n{}, {}\n\n", old.public_key(), new.public_key());
        let verifier = CommandVerifier::parse_list(&list).unwrap();
        assert_eq!(verifier.keys().count(), 2);
        for s in [&old, &new] {
            assert!(
                check(&verifier, &mut ReplayGuard::default(), &sign(s, &execute("h", &["x"]), NOW), "h", NOW).is_ok()
            );
        }
        assert!(CommandVerifier::parse_list(" # none\n").unwrap().is_empty());
    }

    #[test]
    fn keys_of_another_kind_or_garbage_are_refused() {
        let user = KeyPair::new_user();
        assert!(matches!(CommandVerifier::new([user.public_key()]), Err(KeyError::WrongKind { .. })));
        assert!(matches!(CommandVerifier::new(["Nnope"]), Err(KeyError::Invalid { .. })));
        assert!(matches!(CommandSigner::from_seed(&user.seed().unwrap()), Err(KeyError::WrongKind { .. })));
        assert!(matches!(CommandSigner::from_seed("SNnope"), Err(KeyError::Invalid { .. })));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("command.nk");
        let signer = CommandSigner::generate();
        std::fs::write(&file, format!("# muster command key\n{}\n", signer.seed())).unwrap();
        assert_eq!(CommandSigner::from_file(&file).unwrap().public_key(), signer.public_key());
        assert!(format!("{signer:?}").contains(signer.public_key()) && !format!("{signer:?}").contains("SN"));
        assert!(matches!(CommandSigner::from_file(&dir.path().join("absent")), Err(KeyError::Read { .. })));
    }

    #[test]
    fn the_replay_memory_forgets_at_expiry_and_stays_bounded() {
        let fields = |task: u64, expires: UnixMillis| SignedFields {
            kind: SignedKind::Execute,
            host: host("h"),
            task: Some(TaskAttempt { task, attempt: 1 }),
            epoch: 1,
            issued: 0,
            expires,
        };
        let mut guard = ReplayGuard::with_capacity(3);
        guard.admit(&fields(1, 100), 0).unwrap();
        let mut cancel = fields(1, 100);
        cancel.kind = SignedKind::Cancel;
        guard.admit(&cancel, 0).unwrap();
        assert_eq!(guard.admit(&fields(1, 100), 50).unwrap_err().reason(), RefusalReason::Replayed);
        // Forgotten once expired (the verifier refuses it as expired by then).
        guard.admit(&fields(2, 5_000), 100 + CLOCK_LEEWAY_MS + 1).unwrap();
        assert_eq!(guard.len(), 1);
        for task in 10..1_000 {
            guard.admit(&fields(task, 10_000 + task), 3_000).unwrap();
        }
        assert_eq!(guard.len(), 3);
        assert!(guard.admit(&fields(999, 20_000), 3_000).is_err(), "the latest expiring are kept");
    }

    #[test]
    fn an_older_component_set_is_a_replay() {
        let fields = |kind, epoch, issued| SignedFields {
            kind,
            host: host("h"),
            task: None,
            epoch,
            issued,
            expires: issued + 1_000_000,
        };
        let mut guard = ReplayGuard::default();
        guard.admit(&fields(SignedKind::Registration, 2, 500), 500).unwrap();
        guard.admit(&fields(SignedKind::Configure, 2, 500), 501).unwrap();
        assert_eq!(
            guard.admit(&fields(SignedKind::Configure, 2, 499), 502).unwrap_err().reason(),
            RefusalReason::Replayed
        );
        // A newer term wins whatever its leader's clock says.
        guard.admit(&fields(SignedKind::Configure, 3, 10), 503).unwrap();
        assert!(guard.admit(&fields(SignedKind::Registration, 2, 600), 504).is_err());
    }
}

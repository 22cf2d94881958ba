//! Enrollment, pure: the tokens operators create and the one key each host id is bound to, and every rule that
//! decides an agent's enrollment (docs/enrollment.md). No I/O and no clock: the shell passes `wall`; minting the
//! credentials of an accepted enrollment is the enrollment listener's ([`crate::ingest::enrollments`]).
//!
//! An enrollment request is judged in this order, and the first rule that fails refuses it:
//!
//! 1. the token is known, not revoked and not expired;
//! 2. the host's record, if it has one:
//!    - bound (accepted) to this key: accepted again (a re-issue; the token's uses are not spent);
//!    - pending with this key: still pending;
//!    - pending or accepted under *another* key: **impersonation** — refused, counted, logged with both keys
//!      (Salt CVE-2024-38822: a minion could claim another's id);
//!    - rejected with this key: refused; rejected with another key: judged as a new enrollment;
//! 3. a new enrollment: the host matches the token's pattern, the token has uses left (one is spent now);
//! 4. the policy: `auto` accepts, `pending` holds the host for an operator. A host that is registered already
//!    but was never enrolled (its credentials were minted offline, or it ran before security) is held pending
//!    whatever the policy: nobody knows its key, so taking a token's word for it would let any token holder
//!    claim it.

use std::collections::HashMap;

use muster_schemas::api::{ApiError, EnrollVerdict, EnrollmentRecord, EnrollmentState, TokenRecord, TokenSpec};
use muster_schemas::messages::{EnrollRefusal, EnrollRequest};
use muster_schemas::{HostId, TxnOp, UnixMillis};
use tracing::{info, warn};

use super::contract::{Dirty, Output};
pub use crate::config::EnrollPolicy;
use crate::metrics::{RefusalLabel, ServerCounter};

/// Most uses one token may have: a fleet's worth, not unbounded.
pub const MAX_TOKEN_USES: u32 = 1_000_000;

/// Whether `key` has the shape of an nkey user public key (`U` and 55 more base32 characters). The signatures
/// that prove its possession are checked by Prep; this keeps malformed ids out of the records.
pub fn is_user_key(key: &str) -> bool {
    key.len() == 56 && key.starts_with('U') && key.chars().all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c))
}

/// Every token and every host's enrollment.
#[derive(Debug, Default)]
pub struct Enrollment {
    tokens: HashMap<String, TokenRecord>,
    records: HashMap<HostId, EnrollmentRecord>,
}

impl Enrollment {
    /// The committed tokens and enrollments.
    pub fn new(tokens: Vec<TokenRecord>, records: Vec<EnrollmentRecord>) -> Self {
        Self {
            tokens: tokens.into_iter().map(|t| (t.id.clone(), t)).collect(),
            records: records.into_iter().map(|r| (r.host.clone(), r)).collect(),
        }
    }

    /// A token by id.
    pub fn token(&self, id: &str) -> Option<&TokenRecord> {
        self.tokens.get(id)
    }

    /// A host's enrollment.
    pub fn record(&self, host: &HostId) -> Option<&EnrollmentRecord> {
        self.records.get(host)
    }

    /// `token.create`: records a token. Creating the same token again answers it as recorded (a retried write).
    pub fn create_token(
        &mut self,
        spec: TokenSpec,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<TokenRecord, ApiError> {
        if !is_user_key(&spec.id) {
            return Err(ApiError::bad_request(format!("token id {:?} is not a user public key", spec.id)));
        }
        if spec.uses == 0 || spec.uses > MAX_TOKEN_USES {
            return Err(ApiError::bad_request(format!("uses must be 1-{MAX_TOKEN_USES}, not {}", spec.uses)));
        }
        if spec.expires_at <= wall {
            return Err(ApiError::bad_request("the token's expiry has already passed"));
        }
        let hosts = spec.hosts.map(|h| h.trim().to_owned()).filter(|h| !h.is_empty());
        if let Some(p) = &hosts {
            glob::Pattern::new(p).map_err(|e| ApiError::bad_request(format!("bad host pattern {p:?}: {e}")))?;
        }
        if let Some(t) = self.tokens.get(&spec.id) {
            if t.hosts == hosts && t.uses == spec.uses && t.expires_at == spec.expires_at {
                return Ok(t.clone());
            }
            return Err(ApiError::bad_request(format!("token {} exists with other settings", spec.id)));
        }
        let t = TokenRecord {
            id: spec.id,
            hosts,
            uses: spec.uses,
            used: 0,
            created_at: wall,
            expires_at: spec.expires_at,
            revoked_at: None,
        };
        info!(token = %t.id, hosts = ?t.hosts, uses = t.uses, expires_at = t.expires_at, "enrollment token created");
        out.count(ServerCounter::EnrollTokensCreated);
        self.put_token(t.clone(), out);
        Ok(t)
    }

    /// `token.revoke`: the token enrolls nothing more (hosts it enrolled keep their credentials).
    pub fn revoke_token(&mut self, id: &str, wall: UnixMillis, out: &mut Output) -> Result<TokenRecord, ApiError> {
        let t = self.tokens.get(id).ok_or_else(|| ApiError::not_found(format!("no token {id}")))?;
        if t.revoked_at.is_some() {
            return Ok(t.clone());
        }
        let t = TokenRecord { revoked_at: Some(wall), ..t.clone() };
        info!(token = %t.id, "enrollment token revoked");
        self.put_token(t.clone(), out);
        Ok(t)
    }

    /// `host.accept`: binds a pending (or rejected) host to the key it asked with; the agent gets its credentials
    /// when it next asks.
    pub fn accept(&mut self, host: &HostId, wall: UnixMillis, out: &mut Output) -> Result<EnrollmentRecord, ApiError> {
        self.decide(host, EnrollmentState::Accepted, "accepted by an operator", wall, out)
    }

    /// `host.reject`: refuses the key a host asked with (pending) or is bound to (accepted): that key is refused
    /// from now on, and another key may enroll the host anew (a reinstalled machine; revoke the old credentials with
    /// `muster creds revoke`).
    pub fn reject(&mut self, host: &HostId, wall: UnixMillis, out: &mut Output) -> Result<EnrollmentRecord, ApiError> {
        self.decide(host, EnrollmentState::Rejected, "rejected by an operator", wall, out)
    }

    fn decide(
        &mut self,
        host: &HostId,
        to: EnrollmentState,
        reason: &str,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<EnrollmentRecord, ApiError> {
        let r = self.records.get(host).ok_or_else(|| ApiError::not_found(format!("no enrollment for host {host}")))?;
        if r.state == to {
            return Ok(r.clone());
        }
        let r = EnrollmentRecord { state: to, state_since: wall, reason: reason.to_owned(), ..r.clone() };
        info!(host = %host, key = %r.key, state = %to, "enrollment decided by an operator");
        out.count(match to {
            EnrollmentState::Accepted => ServerCounter::EnrollAccepted,
            _ => ServerCounter::EnrollRejected,
        });
        self.put_record(r.clone(), out);
        Ok(r)
    }

    /// Judges an agent's enrollment request (Prep checked its shape and both signatures). `registered`: the host
    /// has a host record (it registered before, with credentials that did not come from enrollment if it has no
    /// enrollment record). Refusals are counted here.
    pub fn enroll(
        &mut self,
        req: &EnrollRequest,
        policy: EnrollPolicy,
        registered: bool,
        wall: UnixMillis,
        out: &mut Output,
    ) -> EnrollVerdict {
        match self.judge(req, policy, registered, wall, out) {
            Ok(verdict) => verdict,
            Err((code, message)) => {
                out.count(ServerCounter::EnrollRefused(RefusalLabel(code)));
                if code == EnrollRefusal::Impersonation {
                    out.count(ServerCounter::EnrollImpersonation);
                }
                EnrollVerdict::Refused { code, message }
            }
        }
    }

    fn judge(
        &mut self,
        req: &EnrollRequest,
        policy: EnrollPolicy,
        registered: bool,
        wall: UnixMillis,
        out: &mut Output,
    ) -> Result<EnrollVerdict, (EnrollRefusal, String)> {
        let host = &req.host;
        let token = self
            .tokens
            .get(&req.token)
            .ok_or_else(|| (EnrollRefusal::UnknownToken, format!("no enrollment token {}", req.token)))?;
        if token.revoked_at.is_some() {
            return Err((EnrollRefusal::RevokedToken, "the enrollment token was revoked".into()));
        }
        if wall >= token.expires_at {
            return Err((EnrollRefusal::ExpiredToken, "the enrollment token has expired".into()));
        }
        if let Some(r) = self.records.get(host) {
            let same_key = r.key == req.key;
            match (r.state, same_key) {
                (EnrollmentState::Accepted, true) => {
                    return Ok(EnrollVerdict::Accepted { host: host.clone(), key: req.key.clone() });
                }
                (EnrollmentState::Pending, true) => {
                    return Ok(EnrollVerdict::Pending { message: pending_message(host, &r.reason) });
                }
                (EnrollmentState::Pending | EnrollmentState::Accepted, false) => {
                    warn!(
                        host = %host,
                        enrolled_key = %r.key,
                        claimed_key = %req.key,
                        state = %r.state,
                        token = %req.token,
                        "enrollment refused: host id already bound to another key (impersonation?)"
                    );
                    let message = format!("host {host} is already {} under another key", r.state.as_str());
                    return Err((EnrollRefusal::Impersonation, message));
                }
                (EnrollmentState::Rejected, true) => {
                    return Err((EnrollRefusal::Rejected, format!("an operator rejected host {host} with this key")));
                }
                (EnrollmentState::Rejected, false) => {}
            }
        }
        if let Some(p) = &token.hosts {
            // Checked to parse at token.create; a pattern that no longer does allows nothing.
            if !glob::Pattern::new(p).is_ok_and(|p| p.matches(host.as_str())) {
                return Err((EnrollRefusal::HostNotAllowed, format!("host {host} does not match the token's {p:?}")));
            }
        }
        if token.used >= token.uses {
            return Err((EnrollRefusal::UsedUp, format!("the enrollment token's {} uses are spent", token.uses)));
        }
        let token = TokenRecord { used: token.used + 1, ..token.clone() };
        self.put_token(token, out);
        let (state, reason) = if registered {
            (EnrollmentState::Pending, "already registered without enrollment: an operator must accept its key")
        } else if policy == EnrollPolicy::Pending {
            (EnrollmentState::Pending, "policy pending: an operator must accept it")
        } else {
            (EnrollmentState::Accepted, "policy auto")
        };
        let r = EnrollmentRecord {
            host: host.clone(),
            key: req.key.clone(),
            state,
            token: req.token.clone(),
            requested_at: wall,
            state_since: wall,
            reason: reason.to_owned(),
        };
        info!(host = %host, key = %r.key, token = %r.token, state = %state, reason, "enrollment");
        self.put_record(r, out);
        Ok(match state {
            EnrollmentState::Accepted => {
                out.count(ServerCounter::EnrollAccepted);
                EnrollVerdict::Accepted { host: host.clone(), key: req.key.clone() }
            }
            _ => {
                out.count(ServerCounter::EnrollPending);
                EnrollVerdict::Pending { message: pending_message(host, reason) }
            }
        })
    }

    /// The txn op writing token `id` as it is now.
    pub fn token_op(&self, id: &str) -> Option<TxnOp> {
        self.tokens.get(id).map(|t| TxnOp::PutToken(Box::new(t.clone())))
    }

    /// The txn op writing `host`'s enrollment as it is now.
    pub fn record_op(&self, host: &HostId) -> Option<TxnOp> {
        self.records.get(host).map(|r| TxnOp::PutEnrollment(Box::new(r.clone())))
    }

    fn put_token(&mut self, t: TokenRecord, out: &mut Output) {
        out.dirty.insert(Dirty::Token(t.id.clone()));
        self.tokens.insert(t.id.clone(), t);
    }

    fn put_record(&mut self, r: EnrollmentRecord, out: &mut Output) {
        out.dirty.insert(Dirty::Enrollment(r.host.clone()));
        self.records.insert(r.host.clone(), r);
    }
}

fn pending_message(host: &HostId, reason: &str) -> String {
    format!("host {host} is pending ({reason}); `muster hosts accept {host}` enrolls it")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::contract::Effect;

    const T: &str = "UTOKENAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const K1: &str = "UKEYONEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const K2: &str = "UKEYTWOAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    const NOW: UnixMillis = 1_000_000;

    fn h(id: &str) -> HostId {
        HostId::new(id).unwrap()
    }

    fn spec(hosts: Option<&str>, uses: u32) -> TokenSpec {
        TokenSpec { id: T.into(), hosts: hosts.map(Into::into), uses, expires_at: NOW + 60_000 }
    }

    fn req(host: &str, key: &str) -> EnrollRequest {
        EnrollRequest {
            schema: 1,
            host: h(host),
            key: key.into(),
            token: T.into(),
            token_sig: Vec::new(),
            key_sig: Vec::new(),
        }
    }

    fn with_token(hosts: Option<&str>, uses: u32) -> Enrollment {
        let mut e = Enrollment::default();
        e.create_token(spec(hosts, uses), NOW, &mut Output::default()).unwrap();
        e
    }

    fn enroll(e: &mut Enrollment, host: &str, key: &str, policy: EnrollPolicy) -> (EnrollVerdict, Output) {
        let mut out = Output::default();
        let v = e.enroll(&req(host, key), policy, false, NOW, &mut out);
        (v, out)
    }

    fn refused(v: &EnrollVerdict) -> Option<EnrollRefusal> {
        match v {
            EnrollVerdict::Refused { code, .. } => Some(*code),
            _ => None,
        }
    }

    fn counted(out: &Output, c: ServerCounter) -> bool {
        out.effects.iter().any(|e| matches!(e, Effect::Count(x) if format!("{x:?}") == format!("{c:?}")))
    }

    #[test]
    fn keys_and_policies_are_parsed() {
        assert!(is_user_key(T) && is_user_key(K1));
        assert!(!is_user_key("NAAAA") && !is_user_key(&T.replace('U', "S")) && !is_user_key(&T[1..]));
        assert!(!is_user_key(&format!("{}1", &T[..55])), "1 is not base32");
        assert_eq!("pending".parse::<EnrollPolicy>(), Ok(EnrollPolicy::Pending));
        assert_eq!("auto".parse::<EnrollPolicy>(), Ok(EnrollPolicy::Auto));
        assert!("yes".parse::<EnrollPolicy>().is_err());
    }

    #[test]
    fn a_token_is_checked_when_created_and_a_repeat_gets_the_same_record() {
        let mut e = Enrollment::default();
        let mut out = Output::default();
        let bad = |e: &mut Enrollment, s: TokenSpec| e.create_token(s, NOW, &mut Output::default()).unwrap_err();
        assert!(bad(&mut e, TokenSpec { id: "nope".into(), ..spec(None, 1) }).message.contains("public key"));
        assert!(bad(&mut e, spec(None, 0)).message.contains("uses"));
        assert!(bad(&mut e, TokenSpec { expires_at: NOW, ..spec(None, 1) }).message.contains("expiry"));
        assert!(bad(&mut e, spec(Some("web-["), 1)).message.contains("pattern"));
        let t = e.create_token(spec(Some("web-*"), 2), NOW, &mut out).unwrap();
        assert_eq!((t.used, t.uses, t.created_at, t.revoked_at), (0, 2, NOW, None));
        assert!(out.dirty.contains(&Dirty::Token(T.into())));
        assert_eq!(e.create_token(spec(Some("web-*"), 2), NOW + 5, &mut Output::default()).unwrap(), t, "a retry");
        assert!(bad(&mut e, spec(Some("db-*"), 2)).message.contains("exists"));
        assert!(matches!(e.token_op(T), Some(TxnOp::PutToken(r)) if *r == t));
    }

    #[test]
    fn a_valid_token_enrolls_a_new_host_under_policy_auto_and_spends_one_use() {
        let mut e = with_token(Some("web-*"), 2);
        let (v, out) = enroll(&mut e, "web-1", K1, EnrollPolicy::Auto);
        assert_eq!(v, EnrollVerdict::Accepted { host: h("web-1"), key: K1.into() });
        assert!(counted(&out, ServerCounter::EnrollAccepted));
        assert!(out.dirty.contains(&Dirty::Token(T.into())) && out.dirty.contains(&Dirty::Enrollment(h("web-1"))));
        assert_eq!(e.token(T).unwrap().used, 1);
        let r = e.record(&h("web-1")).unwrap();
        assert_eq!((r.state, r.key.as_str(), r.token.as_str()), (EnrollmentState::Accepted, K1, T));
        // Asking again with the same key (lost reply, lost creds file): the same answer, no use spent.
        let (again, out) = enroll(&mut e, "web-1", K1, EnrollPolicy::Auto);
        assert_eq!(again, v);
        assert_eq!(e.token(T).unwrap().used, 1);
        assert!(out.dirty.is_empty(), "nothing changed");
    }

    #[test]
    fn another_key_for_an_enrolled_or_pending_host_is_impersonation() {
        let mut e = with_token(None, 5);
        enroll(&mut e, "web-1", K1, EnrollPolicy::Auto);
        let (v, out) = enroll(&mut e, "web-1", K2, EnrollPolicy::Auto);
        assert_eq!(refused(&v), Some(EnrollRefusal::Impersonation));
        assert!(counted(&out, ServerCounter::EnrollImpersonation));
        assert!(counted(&out, ServerCounter::EnrollRefused(RefusalLabel(EnrollRefusal::Impersonation))));
        assert_eq!(e.record(&h("web-1")).unwrap().key, K1, "the binding stands");
        assert_eq!(e.token(T).unwrap().used, 1, "a refusal spends no use");
        enroll(&mut e, "web-2", K1, EnrollPolicy::Pending);
        assert_eq!(refused(&enroll(&mut e, "web-2", K2, EnrollPolicy::Pending).0), Some(EnrollRefusal::Impersonation));
    }

    #[test]
    fn unknown_revoked_expired_and_used_up_tokens_are_refused() {
        let mut e = Enrollment::default();
        assert_eq!(refused(&enroll(&mut e, "web-1", K1, EnrollPolicy::Auto).0), Some(EnrollRefusal::UnknownToken));
        let mut e = with_token(None, 1);
        let mut out = Output::default();
        let v = e.enroll(&req("web-1", K1), EnrollPolicy::Auto, false, NOW + 60_000, &mut out);
        assert_eq!(refused(&v), Some(EnrollRefusal::ExpiredToken));
        assert!(counted(&out, ServerCounter::EnrollRefused(RefusalLabel(EnrollRefusal::ExpiredToken))));
        assert!(matches!(enroll(&mut e, "web-1", K1, EnrollPolicy::Auto).0, EnrollVerdict::Accepted { .. }));
        assert_eq!(refused(&enroll(&mut e, "web-2", K2, EnrollPolicy::Auto).0), Some(EnrollRefusal::UsedUp));
        e.revoke_token(T, NOW, &mut Output::default()).unwrap();
        assert_eq!(refused(&enroll(&mut e, "web-1", K1, EnrollPolicy::Auto).0), Some(EnrollRefusal::RevokedToken));
        assert!(e.revoke_token("UNOPE", NOW, &mut Output::default()).is_err());
    }

    #[test]
    fn a_host_outside_the_tokens_pattern_is_refused() {
        let mut e = with_token(Some("web-*"), 3);
        assert_eq!(refused(&enroll(&mut e, "db-1", K1, EnrollPolicy::Auto).0), Some(EnrollRefusal::HostNotAllowed));
        assert_eq!(e.token(T).unwrap().used, 0);
    }

    #[test]
    fn policy_pending_holds_a_host_until_an_operator_accepts_or_rejects_it() {
        let mut e = with_token(None, 3);
        let (v, out) = enroll(&mut e, "web-1", K1, EnrollPolicy::Pending);
        assert!(matches!(&v, EnrollVerdict::Pending { message } if message.contains("muster hosts accept web-1")));
        assert!(counted(&out, ServerCounter::EnrollPending));
        assert_eq!(e.token(T).unwrap().used, 1, "the token is spent when the host is put pending");
        assert!(matches!(enroll(&mut e, "web-1", K1, EnrollPolicy::Pending).0, EnrollVerdict::Pending { .. }));
        assert_eq!(e.token(T).unwrap().used, 1, "asking again spends nothing");
        let mut out = Output::default();
        let r = e.accept(&h("web-1"), NOW + 1, &mut out).unwrap();
        assert_eq!((r.state, r.state_since), (EnrollmentState::Accepted, NOW + 1));
        assert!(out.dirty.contains(&Dirty::Enrollment(h("web-1"))));
        assert!(matches!(enroll(&mut e, "web-1", K1, EnrollPolicy::Pending).0, EnrollVerdict::Accepted { .. }));
        // Reject: the key is refused from now on; another key may enroll anew.
        enroll(&mut e, "web-2", K1, EnrollPolicy::Pending);
        assert_eq!(e.reject(&h("web-2"), NOW, &mut Output::default()).unwrap().state, EnrollmentState::Rejected);
        assert_eq!(refused(&enroll(&mut e, "web-2", K1, EnrollPolicy::Pending).0), Some(EnrollRefusal::Rejected));
        assert!(matches!(enroll(&mut e, "web-2", K2, EnrollPolicy::Auto).0, EnrollVerdict::Accepted { .. }));
        assert_eq!(e.accept(&h("nobody"), NOW, &mut Output::default()).unwrap_err().code.as_u16(), 404);
    }

    #[test]
    fn a_host_registered_without_enrollment_is_held_pending_whatever_the_policy() {
        let mut e = with_token(None, 3);
        let mut out = Output::default();
        let v = e.enroll(&req("old-1", K1), EnrollPolicy::Auto, true, NOW, &mut out);
        assert!(matches!(&v, EnrollVerdict::Pending { message } if message.contains("already registered")), "{v:?}");
        assert_eq!(e.record(&h("old-1")).unwrap().state, EnrollmentState::Pending);
    }
}

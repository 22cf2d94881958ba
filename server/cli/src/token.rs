//! Enrollment tokens and enrollments (docs/enrollment.md): minting a token from the security directory for
//! `muster token create` (pure but for reading the directory), and the text of `muster token list` and
//! `muster hosts pending`.
//!
//! A token is an *enroll*-role NATS user made here, where the operator's security directory is: a fresh user nkey,
//! and a user JWT for it signed by the enroll role's scoped signing key, expiring with the token. The leader is
//! told only its public key (the token's id), host pattern, uses and expiry; the printed token
//! ([`EnrollToken`]) carries the seed to the agent and nowhere else.

use std::path::Path;
use std::time::Duration;

use muster_schemas::api::{EnrollmentRecord, EnrollmentState, TokenRecord, TokenSpec};
use muster_schemas::messages::EnrollToken;
use muster_schemas::UnixMillis;
use muster_security::claims::{expiring_user_jwt, key_from_seed};
use muster_security::dir::SecurityDir;
use muster_security::roles::Role;
use nkeys::{KeyPair, KeyPairType};

use crate::table::{Align, Table};
use crate::time;

/// The user name every enroll token's JWT carries (its scope's template uses only the public key).
pub const ENROLL_USER_NAME: &str = "enroll";

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The security directory could not be read.
    #[error("security directory: {0}")]
    Dir(String),
    /// Signing failed.
    #[error("cannot sign the enroll token's JWT: {0}")]
    Sign(String),
    /// The enrollment bundle could not be written.
    #[error("cannot write the enrollment bundle: {0}")]
    Bundle(String),
    /// `--ttl` is zero or beyond the year 9999.
    #[error("--ttl must be more than 0 s and less than a few thousand years")]
    Ttl,
}

/// A token just minted: what to print, and what to record at the leader.
#[derive(Debug)]
pub struct NewToken {
    /// The token to hand to agents (`MUSTER_ENROLL_TOKEN`).
    pub token: EnrollToken,
    /// What `token.create` records.
    pub spec: TokenSpec,
}

/// Mints a token from the security directory `dir`: valid for `ttl` from `now`, for `uses` hosts matching `hosts`.
pub fn mint(
    dir: &Path,
    hosts: Option<String>,
    uses: u32,
    ttl: Duration,
    now: UnixMillis,
) -> Result<NewToken, TokenError> {
    let ttl_ms = u64::try_from(ttl.as_millis()).map_err(|_| TokenError::Ttl)?;
    let expires_at = now.checked_add(ttl_ms).filter(|_| ttl_ms > 0).ok_or(TokenError::Ttl)?;
    let dir = SecurityDir::new(dir).map_err(|e| TokenError::Dir(e.to_string()))?;
    let account = dir.account_public().map_err(|e| TokenError::Dir(e.to_string()))?;
    let signer_path = dir.signer_seed(Role::Enroll);
    let seed = std::fs::read_to_string(&signer_path)
        .map_err(|e| TokenError::Dir(format!("cannot read {}: {e}", signer_path.display())))?;
    let signer = key_from_seed(seed.trim(), KeyPairType::Account, "enroll signing seed")
        .map_err(|e| TokenError::Dir(format!("{}: {e}", signer_path.display())))?;
    let user = KeyPair::new_user();
    let jwt = enroll_jwt(&signer, &account, &user.public_key(), expires_at)?;
    let seed = user.seed().map_err(|e| TokenError::Sign(e.to_string()))?;
    Ok(NewToken {
        token: EnrollToken { seed, jwt },
        spec: TokenSpec { id: user.public_key(), hosts, uses, expires_at },
    })
}

/// The enroll user's JWT: scoped (no permissions of its own: the enroll scope's template decides), issued for the
/// MUSTER account, expiring at `expires_at` (nats-server refuses it from then on).
fn enroll_jwt(signer: &KeyPair, account: &str, user: &str, expires_at: UnixMillis) -> Result<String, TokenError> {
    let exp = i64::try_from(expires_at / 1000).map_err(|_| TokenError::Ttl)?;
    expiring_user_jwt(signer, account, ENROLL_USER_NAME, user, Some(exp)).map_err(|e| TokenError::Sign(e.to_string()))
}

/// Writes the enrollment bundle `out`: `token` (0600), and the CA certificate and command key's public key of the
/// security directory `dir` (`ca.pem`, `command.pub`): what an agent enrolling with the token needs, and nothing
/// secret of `dir`. Each file is written under a temporary name and renamed, so an agent starting meanwhile reads
/// the old file or the new one, never half of one.
pub fn write_bundle(dir: &Path, out: &Path, token: &EnrollToken) -> Result<(), TokenError> {
    let sd = SecurityDir::new(dir).map_err(|e| TokenError::Dir(e.to_string()))?;
    let copy = |from: &Path| {
        std::fs::read_to_string(from).map_err(|e| TokenError::Dir(format!("cannot read {}: {e}", from.display())))
    };
    let files = [
        ("token", format!("{token}\n"), true),
        ("ca.pem", copy(&sd.ca_cert())?, false),
        ("command.pub", copy(&sd.command_pub())?, false),
    ];
    for (name, contents, secret) in files {
        let (path, tmp) = (out.join(name), out.join(format!(".{name}.new")));
        let written = muster_security::dir::write_file(&tmp, &contents, secret).map_err(|e| e.to_string());
        written
            .and_then(|()| std::fs::rename(&tmp, &path).map_err(|e| e.to_string()))
            .map_err(|e| TokenError::Bundle(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Where a token stands at `now`.
pub fn token_state(t: &TokenRecord, now: UnixMillis) -> &'static str {
    if t.revoked_at.is_some() {
        "revoked"
    } else if now >= t.expires_at {
        "expired"
    } else if t.used >= t.uses {
        "used up"
    } else {
        "active"
    }
}

/// `muster token create`'s lines about the token, for stderr (stdout holds the token alone, for scripts).
pub fn created(t: &TokenRecord) -> String {
    format!(
        "token {} recorded: {} use(s), hosts {}, expires {}\n",
        t.id,
        t.uses,
        t.hosts.as_deref().unwrap_or("*"),
        time::date(t.expires_at)
    )
}

/// `muster token list`.
pub fn tokens(rows: &[TokenRecord], now: UnixMillis, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("STATE", Align::Left),
        ("USED", Align::Right),
        ("EXPIRES", Align::Left),
        ("HOSTS", Align::Left),
    ]);
    for r in rows {
        t.row([
            r.id.clone(),
            token_state(r, now).to_owned(),
            format!("{}/{}", r.used, r.uses),
            time::date(r.expires_at),
            r.hosts.clone().unwrap_or_else(|| "*".into()),
        ]);
    }
    t.render(width)
}

/// `muster hosts pending`: the enrollments waiting for an operator.
pub fn pending(rows: &[EnrollmentRecord], now: UnixMillis, width: Option<usize>) -> String {
    let mut t =
        Table::new(&[("HOST", Align::Left), ("KEY", Align::Left), ("WAITING", Align::Right), ("WHY", Align::Left)]);
    for r in rows.iter().filter(|r| r.state == EnrollmentState::Pending) {
        t.row([r.host.to_string(), r.key.clone(), time::age(r.state_since, now), r.reason.clone()]);
    }
    t.render(width)
}

/// `muster hosts enrollments`: every host's enrollment, by host.
pub fn enrollments(rows: &[EnrollmentRecord], now: UnixMillis, width: Option<usize>) -> String {
    let mut t = Table::new(&[
        ("HOST", Align::Left),
        ("STATE", Align::Left),
        ("SINCE", Align::Right),
        ("KEY", Align::Left),
        ("TOKEN", Align::Left),
        ("WHY", Align::Left),
    ]);
    for r in rows {
        t.row([
            r.host.to_string(),
            r.state.as_str().to_ascii_lowercase(),
            time::age(r.state_since, now),
            r.key.clone(),
            r.token.clone(),
            r.reason.clone(),
        ]);
    }
    t.render(width)
}

/// `muster hosts accept|reject`.
pub fn decided(r: &EnrollmentRecord) -> String {
    format!("host {} {} (key {})\n", r.host, r.state.as_str().to_ascii_lowercase(), r.key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::HostId;

    fn token(used: u32, expires_at: UnixMillis, revoked_at: Option<UnixMillis>) -> TokenRecord {
        TokenRecord { id: "UT".into(), hosts: None, uses: 2, used, created_at: 0, expires_at, revoked_at }
    }

    #[test]
    fn a_tokens_state_is_revoked_expired_used_up_or_active() {
        assert_eq!(token_state(&token(0, 10, Some(1)), 5), "revoked");
        assert_eq!(token_state(&token(0, 10, None), 10), "expired");
        assert_eq!(token_state(&token(2, 10, None), 5), "used up");
        assert_eq!(token_state(&token(1, 10, None), 5), "active");
    }

    #[test]
    fn only_pending_hosts_are_listed_as_pending() {
        let rec = |host: &str, state| EnrollmentRecord {
            host: HostId::new(host).unwrap(),
            key: "UK".into(),
            state,
            token: "UT".into(),
            requested_at: 0,
            state_since: 0,
            reason: "policy pending".into(),
        };
        let rows = [rec("a", EnrollmentState::Pending), rec("b", EnrollmentState::Accepted)];
        let text = pending(&rows, 1000, None);
        assert!(text.contains("a ") && !text.contains("b "), "{text}");
        let all = enrollments(&rows, 1000, None);
        assert!(all.contains("pending") && all.contains("accepted") && all.lines().count() == 3, "{all}");
    }
}

//! Pure: the NATS JWTs muster mints, with the `nats-jwt-rs` claims types signed through `nkeys`.
//!
//! One operator; a system account SYS (nats-server's `$SYS`, and pushing account updates); one account MUSTER
//! (JetStream unlimited) holding every muster identity. MUSTER has one *scoped* signing key per [`Role`], whose
//! template carries the role's [`permissions`]; a user JWT signed by it holds only a name and no permissions (a
//! scoped user must have none), so the account JWT never changes when a host joins. Revoking a user adds its public
//! key to the account JWT's revocations and re-signs it ([`AccountSpec`]).

use std::collections::BTreeMap;

use muster_schemas::subjects::Subjects;
use muster_schemas::HostId;
use nats_jwt_rs::account::{Account, JetStreamLimits, OperatorLimits};
use nats_jwt_rs::operator::Operator;
use nats_jwt_rs::types::{Limits, NatsLimits, Permission, Permissions as JwtPermissions, SigningKey, UserScope};
use nats_jwt_rs::user::{User, UserPermissionLimits};
use nkeys::{KeyPair, KeyPairType};

use crate::roles::{permissions, Role};

/// The MUSTER account's name in its JWT.
pub const ACCOUNT_NAME: &str = "MUSTER";
/// The system account's name in its JWT.
pub const SYS_ACCOUNT_NAME: &str = "SYS";
/// The operator's name in its JWT.
pub const OPERATOR_NAME: &str = "muster";

/// A JWT or key could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// Signing or encoding a JWT failed.
    #[error("cannot sign the {what} JWT: {detail}")]
    Sign {
        /// Which JWT.
        what: &'static str,
        /// The JWT library's message.
        detail: String,
    },
    /// A key is not what it must be (not a user public key, not a seed of the right kind).
    #[error("invalid {what}: {detail}")]
    Key {
        /// Which key.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

/// Checks that `public` is a valid user public key (`U...`).
pub fn check_user_key(public: &str) -> Result<(), MintError> {
    let bad = |detail: String| MintError::Key { what: "user public key", detail };
    let key = KeyPair::from_public_key(public).map_err(|e| bad(e.to_string()))?;
    if key.key_pair_type() != KeyPairType::User {
        return Err(bad(format!("{public} is a {:?} key, not a user's", key.key_pair_type())));
    }
    Ok(())
}

/// Loads a seed and checks its kind.
pub fn key_from_seed(seed: &str, kind: KeyPairType, what: &'static str) -> Result<KeyPair, MintError> {
    let key = KeyPair::from_seed(seed.trim()).map_err(|e| MintError::Key { what, detail: e.to_string() })?;
    if key.key_pair_type() != kind {
        return Err(MintError::Key { what, detail: format!("a {:?} seed, not a {kind:?} one", key.key_pair_type()) });
    }
    Ok(key)
}

fn sign_err(what: &'static str) -> impl FnOnce(anyhow::Error) -> MintError {
    move |e| MintError::Sign { what, detail: e.to_string() }
}

/// The operator JWT (self-signed), naming the system account.
pub fn operator_jwt(operator: &KeyPair, sys_account: &str) -> Result<String, MintError> {
    let mut claims = Operator::new_claims(OPERATOR_NAME.to_owned(), operator.public_key());
    claims.nats.system_account = Some(sys_account.to_owned());
    claims.encode(operator).map_err(sign_err("operator"))
}

/// The system account's JWT, signed by the operator.
pub fn sys_account_jwt(operator: &KeyPair, sys_account: &str) -> Result<String, MintError> {
    Account::new_claims(SYS_ACCOUNT_NAME.to_owned(), sys_account.to_owned()).encode(operator).map_err(sign_err("SYS"))
}

/// A user of the system account (for `$SYS.REQ.CLAIMS.UPDATE`), signed by the system account's own key: no
/// permission limits, as `nsc` makes it.
pub fn sys_user_jwt(sys_account: &KeyPair, user_public: &str) -> Result<String, MintError> {
    check_user_key(user_public)?;
    User::new_claims("sys".to_owned(), user_public.to_owned()).encode(sys_account).map_err(sign_err("sys user"))
}

/// Everything the MUSTER account JWT says; the same spec always gives the same claims, so revoking re-signs the
/// spec with one more revocation rather than editing a decoded JWT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountSpec {
    /// The account's public key.
    pub account: String,
    /// The subject names the role templates are built from.
    pub subjects: Subjects,
    /// Each role's signing public key.
    pub signers: BTreeMap<Role, String>,
    /// Revoked user public keys and when (Unix seconds): JWTs issued at or before that time are refused.
    pub revocations: BTreeMap<String, u64>,
}

/// A template with no limits beyond the account's (0 would mean none allowed).
fn unlimited() -> Option<Limits> {
    Some(Limits { user_limits: None, nats_limits: Some(NatsLimits::default()) })
}

impl AccountSpec {
    /// The account's claims, signed by the operator.
    pub fn jwt(&self, operator: &KeyPair) -> Result<String, MintError> {
        let mut claims = Account::new_claims(ACCOUNT_NAME.to_owned(), self.account.clone());
        let limits = OperatorLimits {
            jetstream: Some(JetStreamLimits {
                memory_storage: Some(-1),
                disk_storage: Some(-1),
                streams: Some(-1),
                consumer: Some(-1),
                ..Default::default()
            }),
            ..Default::default()
        };
        claims.nats.limits = Some(limits);
        let keys = self.signers.iter().map(|(role, key)| {
            let p = permissions(*role, &self.subjects);
            let template = UserPermissionLimits {
                permissions: JwtPermissions {
                    publish: Permission { allow: p.publish, deny: Vec::new() },
                    subscribe: Permission { allow: p.subscribe, deny: Vec::new() },
                    resp: None,
                },
                limits: unlimited(),
                bearer_token: None,
                allowed_connection_types: None,
            };
            let scope = UserScope {
                key: key.clone(),
                role: Some(role.as_str().to_owned()),
                template: Some(template),
                description: Some(role.meaning().to_owned()),
                ..Default::default()
            };
            SigningKey { key: key.clone(), scope: Some(scope) }
        });
        claims.nats.signing_keys = Some(keys.collect());
        if !self.revocations.is_empty() {
            claims.nats.revocations = Some(self.revocations.clone());
        }
        claims.encode(operator).map_err(sign_err("MUSTER account"))
    }
}

/// A user JWT signed by a role's scoped key: its name (for an agent, the host id) and nothing else, so the scope's
/// template decides what it may do.
pub fn scoped_user_jwt(signer: &KeyPair, account: &str, name: &str, user_public: &str) -> Result<String, MintError> {
    expiring_user_jwt(signer, account, name, user_public, None)
}

/// [`scoped_user_jwt`] that nats-server refuses from `expires_at` (Unix seconds) on, when given: an enrollment
/// token's user expires with the token.
pub fn expiring_user_jwt(
    signer: &KeyPair,
    account: &str,
    name: &str,
    user_public: &str,
    expires_at: Option<i64>,
) -> Result<String, MintError> {
    check_user_key(user_public)?;
    let mut claims = User::new_claims(name.to_owned(), user_public.to_owned());
    claims.exp = expires_at;
    claims.nats.issuer_account = Some(account.to_owned());
    claims.nats.permissions = UserPermissionLimits {
        permissions: JwtPermissions::default(),
        limits: None,
        bearer_token: None,
        allowed_connection_types: None,
    };
    claims.encode(signer).map_err(sign_err("user"))
}

/// Mints agent user JWTs: the agent role's signing key and the account it signs for. Offline (`muster creds agent`)
/// and at enrollment (muster-server, which holds only this seed, never the operator's).
#[derive(Debug)]
pub struct AgentMinter {
    signer: KeyPair,
    account: String,
}

impl AgentMinter {
    /// A minter from the agent signing key's seed (`SA...`) and the MUSTER account's public key.
    pub fn new(signer_seed: &str, account: &str) -> Result<Self, MintError> {
        let signer = key_from_seed(signer_seed, KeyPairType::Account, "agent signing seed")?;
        let acc = KeyPair::from_public_key(account)
            .map_err(|e| MintError::Key { what: "account public key", detail: e.to_string() })?;
        if acc.key_pair_type() != KeyPairType::Account {
            return Err(MintError::Key { what: "account public key", detail: format!("{account} is not one") });
        }
        Ok(Self { signer, account: account.to_owned() })
    }

    /// The signing key's public key (it must be the agent scope of the account JWT for the JWTs to be accepted).
    pub fn signer_public(&self) -> String {
        self.signer.public_key()
    }

    /// The user JWT of `host`'s agent for the user public key `user_public` (the agent keeps the seed).
    pub fn mint(&self, host: &HostId, user_public: &str) -> Result<String, MintError> {
        scoped_user_jwt(&self.signer, &self.account, host.as_str(), user_public)
    }
}

#[cfg(test)]
mod tests {
    use data_encoding::BASE64URL_NOPAD;

    use super::*;

    fn payload(jwt: &str) -> serde_json::Value {
        let body = jwt.split('.').nth(1).unwrap();
        serde_json::from_slice(&BASE64URL_NOPAD.decode(body.as_bytes()).unwrap()).unwrap()
    }

    fn spec(signer: &KeyPair) -> AccountSpec {
        AccountSpec {
            account: KeyPair::new_account().public_key(),
            subjects: Subjects::default(),
            signers: [(Role::Agent, signer.public_key())].into(),
            revocations: BTreeMap::new(),
        }
    }

    #[test]
    fn account_jwt_carries_scoped_keys_jetstream_and_revocations() {
        let operator = KeyPair::new_operator();
        let signer = KeyPair::new_account();
        let mut spec = spec(&signer);
        spec.revocations.insert("UREVOKED".into(), 42);
        let jwt = spec.jwt(&operator).unwrap();
        let p = payload(&jwt);
        assert_eq!(p["iss"], operator.public_key());
        assert_eq!(p["nats"]["limits"]["disk_storage"], -1);
        let scope = &p["nats"]["signing_keys"][0];
        assert_eq!(scope["kind"], "user_scope");
        assert_eq!(scope["role"], "agent");
        assert_eq!(scope["template"]["pub"]["allow"][0], "muster.reg.{{name()}}");
        assert_eq!(scope["template"]["subs"], -1);
        assert_eq!(p["nats"]["revocations"]["UREVOKED"], 42);
    }

    #[test]
    fn an_expiring_user_jwt_expires_and_names_the_account() {
        let signer = KeyPair::new_account();
        let account = KeyPair::new_account().public_key();
        let user = KeyPair::new_user().public_key();
        let p = payload(&expiring_user_jwt(&signer, &account, "enroll", &user, Some(1_700_000_000)).unwrap());
        assert_eq!(
            (p["exp"].as_i64(), p["sub"].as_str(), p["name"].as_str()),
            (Some(1_700_000_000), Some(user.as_str()), Some("enroll"))
        );
        assert_eq!(p["nats"]["issuer_account"], account);
        assert!(payload(&scoped_user_jwt(&signer, &account, "h", &user).unwrap()).get("exp").is_none());
    }

    #[test]
    fn agent_jwt_holds_only_its_name() {
        let signer = KeyPair::new_account();
        let account = KeyPair::new_account().public_key();
        let minter = AgentMinter::new(&signer.seed().unwrap(), &account).unwrap();
        let user = KeyPair::new_user();
        let jwt = minter.mint(&HostId::new("web-1").unwrap(), &user.public_key()).unwrap();
        let p = payload(&jwt);
        assert_eq!(p["name"], "web-1");
        assert_eq!(p["sub"], user.public_key());
        assert_eq!(p["iss"], signer.public_key());
        assert_eq!(p["nats"]["issuer_account"], account);
        assert_eq!(p["nats"]["pub"], serde_json::json!({}));
        assert!(p["nats"].get("subs").is_none(), "a scoped user must carry no limits");
    }

    #[test]
    fn wrong_keys_are_refused() {
        let signer = KeyPair::new_account();
        let account = KeyPair::new_account().public_key();
        assert!(AgentMinter::new(&KeyPair::new_user().seed().unwrap(), &account).is_err());
        assert!(AgentMinter::new(&signer.seed().unwrap(), &KeyPair::new_user().public_key()).is_err());
        let minter = AgentMinter::new(&signer.seed().unwrap(), &account).unwrap();
        let host = HostId::new("h").unwrap();
        assert!(minter.mint(&host, &KeyPair::new_account().public_key()).is_err());
        assert!(minter.mint(&host, "not a key").is_err());
    }
}

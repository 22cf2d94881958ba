//! Enrollment (docs/enrollment.md): an agent started with an enrollment token (`MUSTER_ENROLL_TOKEN`) and no
//! credentials gets its own, once, and keeps them in its state directory (`MUSTER_STATE_DIR`) — the one thing the
//! agent persists.
//!
//! 1. Its own user nkey is made here and its seed kept in `<state>/agent.nk` (0600) until enrollment ends: the
//!    seed never leaves the host, and an agent restarted while pending asks again with the same key.
//! 2. It connects with the token's credentials (an *enroll* user: it may publish only `<prefix>.enroll.*`) and asks
//!    `<prefix>.enroll.<host>` with its host id, its public key and the token's id, both signed.
//! 3. Pending: it logs that and asks again every few seconds; refused: it stops with the reason (a refusal that
//!    can pass, `internal`, is retried); accepted: it writes `<state>/agent.creds` (the JWT the leader minted and its
//!    seed, 0600) and from then on connects with it — the token is ignored once that file exists.
//!
//! [`plan`] decides (reading only whether files exist); [`enroll`] performs.

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::{Client, ConnectErrorKind};
use muster_nats::{ClientTrust, ConnectParams};
use muster_schemas::messages::{EnrollRefusal, EnrollReply, EnrollRequest, EnrollToken};
use muster_schemas::{codec, HostId, Subjects, PROTOCOL_VERSION};
use muster_security::creds::Creds;
use nkeys::{KeyPair, KeyPairType};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::backoff::{server_retry_after, Backoff};
use crate::config::{AgentConfig, EnrollTokenSource};

/// The agent's credentials in its state directory, written by enrollment.
pub const CREDS_FILE: &str = "agent.creds";
/// The agent's own seed while it enrolls (removed once it is in [`CREDS_FILE`]).
pub const KEY_FILE: &str = "agent.nk";
/// The token's credentials while the agent enrolls (removed afterwards).
pub const TOKEN_CREDS_FILE: &str = "enroll.creds";
/// How long one enrollment request waits for the leader.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest reply read.
const MAX_REPLY_BYTES: usize = 64 * 1024;

/// Which credentials the agent connects with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// `MUSTER_NATS_CREDS` names a file: used as is, no enrollment.
    Configured,
    /// The state directory holds credentials from an earlier enrollment.
    Stored(PathBuf),
    /// Enroll with this token first.
    Enroll(EnrollToken),
    /// No credentials at all (a loopback lab, or `MUSTER_INSECURE`).
    Anonymous,
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The token (or the file holding it) cannot be read.
    #[error("MUSTER_ENROLL_TOKEN: {0}")]
    Token(String),
    /// The state directory cannot be written.
    #[error("state directory {path}: {source}")]
    State {
        /// The file or directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key could not be made or read.
    #[error("agent key: {0}")]
    Key(String),
    /// nats-server refused the token's credentials.
    #[error("NATS refused the enrollment token ({0}): it has expired or is not a token of this cluster")]
    TokenRefused(String),
    /// The leader refused the enrollment.
    #[error("enrollment refused ({code}): {message}")]
    Refused {
        /// Why, as a code.
        code: EnrollRefusal,
        /// Why, in words.
        message: String,
    },
}

/// Which credentials to use: `MUSTER_NATS_CREDS` first, then the state directory's, then the token.
pub fn plan(config: &AgentConfig) -> Result<Plan, EnrollError> {
    if config.trust.credentials.is_some() {
        return Ok(Plan::Configured);
    }
    let stored = config.state_dir.join(CREDS_FILE);
    if stored.is_file() {
        return Ok(Plan::Stored(stored));
    }
    match &config.enroll_token {
        None => Ok(Plan::Anonymous),
        Some(EnrollTokenSource::Inline(t)) => Ok(Plan::Enroll(t.clone())),
        Some(EnrollTokenSource::File(path)) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| EnrollError::Token(format!("{}: {e}", path.display())))?;
            EnrollToken::parse(&text)
                .map(Plan::Enroll)
                .map_err(|e| EnrollError::Token(format!("{}: {e}", path.display())))
        }
    }
}

/// The request an agent sends: its host and key, the token's id, both signatures.
pub fn request(host: &HostId, agent: &KeyPair, token: &KeyPair) -> Result<EnrollRequest, EnrollError> {
    let (key, token_id) = (agent.public_key(), token.public_key());
    let signed = EnrollRequest::signed_bytes(host, &key, &token_id);
    let sign = |k: &KeyPair| k.sign(&signed).map_err(|e| EnrollError::Key(e.to_string()));
    Ok(EnrollRequest {
        schema: PROTOCOL_VERSION,
        host: host.clone(),
        key,
        token: token_id,
        token_sig: sign(token)?,
        key_sig: sign(agent)?,
    })
}

/// What to do after a reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Enrolled: this JWT with the agent's seed are its credentials.
    Done(String),
    /// Ask again after this long.
    Retry(Duration),
    /// Stop with this error.
    Fail(EnrollRefusal, String),
}

/// Decides what a reply means (`failures`: replies that were not progress so far, for the backoff).
pub fn next(reply: EnrollReply, failures: u32, rng: &mut impl rand::Rng) -> Next {
    match reply {
        EnrollReply::Accepted { jwt } => Next::Done(jwt),
        EnrollReply::Pending { retry_after_ms, .. } => {
            Next::Retry(server_retry_after(Duration::from_millis(retry_after_ms), rng))
        }
        EnrollReply::Refused { code, .. } if code.is_retryable() => Next::Retry(Backoff::REGISTER.delay(failures, rng)),
        EnrollReply::Refused { code, message } => Next::Fail(code, message),
    }
}

/// Enrolls this host with `token`; returns the path of the credentials written, or `None` if `shutdown` came first.
pub async fn enroll(
    config: &AgentConfig,
    token: &EnrollToken,
    shutdown: &CancellationToken,
) -> Result<Option<PathBuf>, EnrollError> {
    let dir = &config.state_dir;
    make_private_dir(dir)?;
    let agent = agent_key(&dir.join(KEY_FILE))?;
    let token_key = KeyPair::from_seed(&token.seed)
        .ok()
        .filter(|k| k.key_pair_type() == KeyPairType::User)
        .ok_or_else(|| EnrollError::Token("the token's seed is not a user seed".into()))?;
    let token_creds = dir.join(TOKEN_CREDS_FILE);
    write_private(&token_creds, &Creds { jwt: token.jwt.clone(), seed: token.seed.clone() }.render())?;
    let req = codec::encode(&request(&config.host_id, &agent, &token_key)?);
    info!(host = %config.host_id, key = %agent.public_key(), token = %token_key.public_key(), "enrolling");

    let Some(client) = connect(config, &token_creds, shutdown).await? else { return Ok(None) };
    let subject = Subjects::new(config.prefix.clone()).enroll(&config.host_id);
    let mut rng = rand::rng();
    let mut failures = 0;
    let jwt = loop {
        let asked = tokio::time::timeout(REQUEST_TIMEOUT, client.request(subject.clone(), req.clone().into()));
        let wait = match asked.await {
            Ok(Ok(msg)) => match codec::decode::<EnrollReply>(&msg.payload, MAX_REPLY_BYTES) {
                Ok(reply) => {
                    if let EnrollReply::Pending { message, .. } = &reply {
                        info!(host = %config.host_id, "enrollment pending: {message}");
                    }
                    if let EnrollReply::Refused { code, message } = &reply {
                        warn!(host = %config.host_id, %code, "enrollment refused: {message}");
                    }
                    match next(reply, failures + 1, &mut rng) {
                        Next::Done(jwt) => break jwt,
                        Next::Retry(after) => after,
                        Next::Fail(code, message) => return Err(EnrollError::Refused { code, message }),
                    }
                }
                Err(e) => {
                    warn!(error = %e, "undecodable enrollment reply");
                    Backoff::REGISTER.delay(failures + 1, &mut rng)
                }
            },
            // No leader right now (or the connection is down): ask again.
            Ok(Err(e)) => {
                warn!(error = %e, "enrollment request failed; retrying");
                Backoff::REGISTER.delay(failures + 1, &mut rng)
            }
            Err(_) => {
                warn!("no answer to the enrollment request; retrying");
                Backoff::REGISTER.delay(failures + 1, &mut rng)
            }
        };
        failures += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(wait) => {}
        }
    };
    let _ = client.drain().await;
    let seed = agent.seed().map_err(|e| EnrollError::Key(e.to_string()))?;
    let creds = dir.join(CREDS_FILE);
    write_private(&creds, &Creds { jwt, seed }.render())?;
    // The seed now lives in the credentials file only; the token's credentials are not needed again.
    for spent in [dir.join(KEY_FILE), token_creds] {
        if let Err(e) = std::fs::remove_file(&spent) {
            warn!(file = %spent.display(), error = %e, "cannot remove a file enrollment no longer needs");
        }
    }
    info!(host = %config.host_id, creds = %creds.display(), "enrolled: credentials stored");
    Ok(Some(creds))
}

/// Connects with the token's credentials, retrying while NATS is unreachable; a refusal of the credentials
/// themselves (expired, unknown) is final.
async fn connect(
    config: &AgentConfig,
    creds: &Path,
    shutdown: &CancellationToken,
) -> Result<Option<Client>, EnrollError> {
    let trust = ClientTrust { credentials: Some(creds.to_owned()), ..config.trust.clone() };
    let mut rng = rand::rng();
    let mut failures = 0;
    loop {
        let params = ConnectParams {
            urls: config.nats_servers.clone(),
            name: format!("muster-agent {} (enrolling)", config.host_id),
            trust: trust.clone(),
            ..ConnectParams::default()
        };
        match muster_nats::connect(params).await {
            Ok(client) => return Ok(Some(client)),
            Err(muster_nats::connect::ConnectError::Nats { source, .. })
                if matches!(
                    source.kind(),
                    ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication
                ) =>
            {
                return Err(EnrollError::TokenRefused(source.to_string()));
            }
            Err(e @ muster_nats::connect::ConnectError::Nats { .. }) => {
                warn!(error = %e, "cannot connect to enroll; retrying")
            }
            // A file or credentials problem does not pass by waiting.
            Err(e) => return Err(EnrollError::Token(e.to_string())),
        }
        failures += 1;
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Backoff::REGISTER.delay(failures, &mut rng)) => {}
        }
    }
}

/// The agent's key: the seed kept from an earlier attempt, or a new one, kept now.
fn agent_key(path: &Path) -> Result<KeyPair, EnrollError> {
    if let Ok(seed) = std::fs::read_to_string(path) {
        return KeyPair::from_seed(seed.trim())
            .ok()
            .filter(|k| k.key_pair_type() == KeyPairType::User)
            .ok_or_else(|| EnrollError::Key(format!("{} holds no user seed; remove it", path.display())));
    }
    let key = KeyPair::new_user();
    let seed = key.seed().map_err(|e| EnrollError::Key(e.to_string()))?;
    write_private(path, &format!("{seed}\n"))?;
    Ok(key)
}

fn state_error(path: &Path) -> impl FnOnce(std::io::Error) -> EnrollError + '_ {
    move |source| EnrollError::State { path: path.display().to_string(), source }
}

fn make_private_dir(dir: &Path) -> Result<(), EnrollError> {
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(state_error(dir))
}

/// Writes `text` to `path`, readable by its owner only, replacing the file in one rename.
fn write_private(path: &Path, text: &str) -> Result<(), EnrollError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(state_error(&tmp))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(state_error(&tmp))?;
    std::fs::rename(&tmp, path).map_err(state_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_request_is_signed_by_the_token_and_the_agent() {
        let (agent, token) = (KeyPair::new_user(), KeyPair::new_user());
        let host = HostId::new("web-1").unwrap();
        let r = request(&host, &agent, &token).unwrap();
        assert_eq!((r.key.as_str(), r.token.as_str()), (agent.public_key().as_str(), token.public_key().as_str()));
        let signed = EnrollRequest::signed_bytes(&host, &r.key, &r.token);
        KeyPair::from_public_key(&r.token).unwrap().verify(&signed, &r.token_sig).unwrap();
        KeyPair::from_public_key(&r.key).unwrap().verify(&signed, &r.key_sig).unwrap();
        let other = EnrollRequest::signed_bytes(&HostId::new("web-2").unwrap(), &r.key, &r.token);
        assert!(KeyPair::from_public_key(&r.key).unwrap().verify(&other, &r.key_sig).is_err());
    }

    #[test]
    fn pending_and_internal_are_retried_and_other_refusals_stop() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        assert_eq!(next(EnrollReply::Accepted { jwt: "j".into() }, 1, &mut rng), Next::Done("j".into()));
        let pending = EnrollReply::Pending { message: "wait".into(), retry_after_ms: 5_000 };
        assert!(matches!(next(pending, 1, &mut rng), Next::Retry(d) if d <= Duration::from_secs(6)));
        let internal = EnrollReply::Refused { code: EnrollRefusal::Internal, message: "log".into() };
        assert!(matches!(next(internal, 1, &mut rng), Next::Retry(_)));
        let used = EnrollReply::Refused { code: EnrollRefusal::UsedUp, message: "spent".into() };
        assert_eq!(next(used, 1, &mut rng), Next::Fail(EnrollRefusal::UsedUp, "spent".into()));
    }

    #[test]
    fn files_are_private_and_the_key_survives_a_restart() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        make_private_dir(&state).unwrap();
        let k1 = agent_key(&state.join(KEY_FILE)).unwrap();
        let k2 = agent_key(&state.join(KEY_FILE)).unwrap();
        assert_eq!(k1.public_key(), k2.public_key(), "a pending agent asks again with the same key");
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state.join(KEY_FILE)), 0o600);
        assert_eq!(mode(&state), 0o700);
        std::fs::write(state.join("bad.nk"), "SOMETHING").unwrap();
        assert!(agent_key(&state.join("bad.nk")).is_err());
    }
}

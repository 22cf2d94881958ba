//! I/O: pushing a re-signed account JWT to nats-server (the `full` resolver) over `$SYS.REQ.CLAIMS.UPDATE`, with a
//! client connected as the system account's user (`sys.creds`; the caller connects through
//! `muster_nats::connect`). nats-server applies it at once: connections of users the JWT revokes are closed, and
//! their JWTs are refused from then on; no restart, no config edit. In a cluster the nodes pass it on.

use std::time::Duration;

use serde::Deserialize;

/// The subject nats-server's account resolver takes account JWT updates on.
pub const CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// How long to wait for nats-server's answer.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// nats-server did not take the JWT.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    /// No answer (not connected as the system account, or no `full`/`cache` resolver).
    #[error("no answer from nats-server on {CLAIMS_UPDATE} (is the client the system account's user?): {0}")]
    Request(String),
    /// nats-server refused it.
    #[error("nats-server refused the account JWT: {0}")]
    Refused(String),
}

#[derive(Debug, Deserialize)]
struct Reply {
    #[serde(default)]
    data: Option<Outcome>,
    #[serde(default)]
    error: Option<Outcome>,
}

#[derive(Debug, Deserialize)]
struct Outcome {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    message: String,
    #[serde(default)]
    description: String,
}

/// What nats-server's reply means: `Ok` with its message, or why it refused.
pub fn parse_reply(body: &[u8]) -> Result<String, PushError> {
    let reply: Reply = serde_json::from_slice(body)
        .map_err(|e| PushError::Refused(format!("unreadable reply {:?}: {e}", String::from_utf8_lossy(body))))?;
    match (reply.data, reply.error) {
        (_, Some(e)) => Err(PushError::Refused(format!("{} {}{}", e.code, e.description, e.message))),
        (Some(d), None) if d.code == 200 || d.code == 0 => Ok(d.message),
        (Some(d), None) => Err(PushError::Refused(format!("{} {}", d.code, d.message))),
        (None, None) => Err(PushError::Refused(format!("empty reply {:?}", String::from_utf8_lossy(body)))),
    }
}

/// Pushes `account_jwt` and returns nats-server's message (e.g. `jwt updated`).
pub async fn push_account_jwt(client: &async_nats::Client, account_jwt: &str) -> Result<String, PushError> {
    let request = client.request(CLAIMS_UPDATE, account_jwt.to_owned().into());
    let reply = tokio::time::timeout(PUSH_TIMEOUT, request)
        .await
        .map_err(|_| PushError::Request(format!("timed out after {PUSH_TIMEOUT:?}")))?
        .map_err(|e| PushError::Request(e.to_string()))?;
    parse_reply(&reply.payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read() {
        let ok = br#"{"server":{"name":"n"},"data":{"account":"A","code":200,"message":"jwt updated"}}"#;
        assert_eq!(parse_reply(ok).unwrap(), "jwt updated");
        let bad = br#"{"error":{"account":"A","code":500,"description":"jwt.IssuedAt is not newer"}}"#;
        assert!(matches!(parse_reply(bad), Err(PushError::Refused(m)) if m.contains("not newer")));
        assert!(parse_reply(b"nope").is_err());
    }
}

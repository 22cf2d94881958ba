//! Prep, the first link of the request chain (registrations, heartbeats, reports): size limit, decode, protocol
//! version, host id validity, subject host == body host. Each failure is a [`Rejection`] with an [`ErrorCode`] the
//! caller replies with and counts; nothing here touches state.
//!
//! A message is decoded once. Only when that fails is its minimal envelope decoded as well, so a peer speaking
//! another version gets `unsupported_version` (actionable) rather than `malformed`.

use muster_schemas::commands::Report;
use muster_schemas::{codec, limits, ErrorCode, Heartbeat, HostId, RegisterRequest, Subjects, PROTOCOL_VERSION};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Which check failed; counted per code, and sent as `Muster-Error` when the message is answered.
    pub code: ErrorCode,
    /// What was wrong, for the reply and the log.
    pub message: String,
    /// The host token of the subject, when it was a valid host id (for logs and the reply's `Muster-Host`).
    pub subject_host: Option<HostId>,
}

/// The fields every agent message starts with, decoded alone only to explain why a message did not decode.
#[derive(Deserialize)]
struct MinimalEnvelope {
    schema: u16,
    host: String,
}

/// Prep for `muster.reg.<host>`.
pub fn register(subjects: &Subjects, subject: &str, payload: &[u8]) -> Result<RegisterRequest, Rejection> {
    prep(subjects, subject, payload, limits::MAX_REGISTER_BYTES)
}

/// Prep for `muster.hb.<host>`.
pub fn heartbeat(subjects: &Subjects, subject: &str, payload: &[u8]) -> Result<Heartbeat, Rejection> {
    prep(subjects, subject, payload, limits::MAX_HEARTBEAT_BYTES)
}

/// Prep for `muster.report.<host>`.
pub fn report(subjects: &Subjects, subject: &str, payload: &[u8]) -> Result<Report, Rejection> {
    prep(subjects, subject, payload, limits::MAX_REPORT_BYTES)
}

/// What Prep needs of a decoded message: its protocol version and the host it names.
trait Envelope {
    fn schema(&self) -> u16;
    fn host(&self) -> &HostId;
}

impl Envelope for RegisterRequest {
    fn schema(&self) -> u16 {
        self.schema
    }
    fn host(&self) -> &HostId {
        &self.host
    }
}

impl Envelope for Heartbeat {
    fn schema(&self) -> u16 {
        self.schema
    }
    fn host(&self) -> &HostId {
        &self.host
    }
}

impl Envelope for Report {
    fn schema(&self) -> u16 {
        self.schema
    }
    fn host(&self) -> &HostId {
        &self.host
    }
}

fn prep<T: DeserializeOwned + Envelope>(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
    limit: usize,
) -> Result<T, Rejection> {
    let token = subjects.host_token(subject).unwrap_or_default();
    let subject_host = HostId::new(token).ok();
    let reject = |code, message: String| Rejection { code, message, subject_host: subject_host.clone() };
    if subject_host.is_none() {
        let e = HostId::new(token).err().map(|e| e.to_string()).unwrap_or_default();
        return Err(reject(ErrorCode::InvalidHostId, format!("subject {subject:?}: {e}")));
    }
    // Decoded once: a message that decodes is checked from its own fields; only one that does not is decoded
    // again as the minimal envelope, to tell another protocol version or a bad host id from garbage.
    let msg: T = match codec::decode(payload, limit) {
        Ok(msg) => msg,
        Err(e @ codec::DecodeError::TooLarge { .. }) => return Err(reject(ErrorCode::TooLarge, e.to_string())),
        Err(e) => return Err(diagnose(payload, limit, e, &reject)),
    };
    if msg.schema() != PROTOCOL_VERSION {
        return Err(reject(ErrorCode::UnsupportedVersion, unsupported(msg.schema())));
    }
    if Some(msg.host()) != subject_host.as_ref() {
        return Err(reject(
            ErrorCode::HostMismatch,
            format!("subject names host {token:?} but the body names {:?}", msg.host().as_str()),
        ));
    }
    Ok(msg)
}

/// Why a message that did not decode was refused: another protocol version, an invalid host id, or malformed.
fn diagnose(
    payload: &[u8],
    limit: usize,
    error: codec::DecodeError,
    reject: &impl Fn(ErrorCode, String) -> Rejection,
) -> Rejection {
    let Ok(env) = codec::decode::<MinimalEnvelope>(payload, limit) else {
        return reject(ErrorCode::Malformed, error.to_string());
    };
    if env.schema != PROTOCOL_VERSION {
        return reject(ErrorCode::UnsupportedVersion, unsupported(env.schema));
    }
    match HostId::new(env.host) {
        Err(e) => reject(ErrorCode::InvalidHostId, e.to_string()),
        Ok(_) => reject(ErrorCode::Malformed, error.to_string()),
    }
}

fn unsupported(schema: u16) -> String {
    format!("protocol version {schema} is not supported; this server speaks {PROTOCOL_VERSION}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::{codec::encode, Health};
    use serde::Serialize;

    fn s() -> Subjects {
        Subjects::default()
    }

    fn beat(host: &str, schema: u16) -> Vec<u8> {
        encode(&Heartbeat { schema, host: HostId::new(host).unwrap(), seq: 1, sent_at: 1, health: Health::default() })
    }

    #[test]
    fn accepts_a_well_formed_heartbeat() {
        assert!(heartbeat(&s(), "muster.hb.a", &beat("a", PROTOCOL_VERSION)).is_ok());
    }

    #[test]
    fn each_bad_input_gets_its_own_code() {
        let code = |subject: &str, payload: &[u8]| heartbeat(&s(), subject, payload).unwrap_err().code;
        assert_eq!(code("muster.hb.a", b"\xc1garbage"), ErrorCode::Malformed);
        assert_eq!(code("muster.hb.a", &vec![0u8; limits::MAX_HEARTBEAT_BYTES + 1]), ErrorCode::TooLarge);
        assert_eq!(code("muster.hb.a", &beat("a", 999)), ErrorCode::UnsupportedVersion);
        assert_eq!(code("muster.hb.b", &beat("a", PROTOCOL_VERSION)), ErrorCode::HostMismatch);
        assert_eq!(code("muster.hb.a", &beat("a", PROTOCOL_VERSION)[..10]), ErrorCode::Malformed);

        #[derive(Serialize)]
        struct Forged<'a> {
            schema: u16,
            host: &'a str,
        }
        let forged = rmp_serde::to_vec_named(&Forged { schema: PROTOCOL_VERSION, host: "bad.host" }).unwrap();
        assert_eq!(code("muster.hb.a", &forged), ErrorCode::InvalidHostId);
        let ok_envelope = rmp_serde::to_vec_named(&Forged { schema: PROTOCOL_VERSION, host: "a" }).unwrap();
        assert_eq!(code("muster.hb.a", &ok_envelope), ErrorCode::Malformed, "missing fields are malformed");
    }
}

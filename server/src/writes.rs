//! The leader's write endpoints on `<prefix>.leader.>`, subscribed to only while leading: each call is parsed here,
//! executed by the core, and answered after commit. Replies are the typed JSON of `muster_schemas::api`; an error is
//! the one [`ApiError`] in the services framework's error headers (and as the JSON body), so the answering
//! instance relays it as it is.
//!
//! Only the leader answers. Every instance that ever led may still be subscribed for a moment (a deposed leader
//! that has not noticed yet, or one whose term is ending), and NATS hands a request to every subscriber: a fast
//! "stepped down" from one of them would beat the real leader's answer and make the caller retry a write that
//! is being committed. So a call whose term ends before the core answered it gets no answer at all, from here:
//! the core's own answers are given only after the batch proved the leadership ([`crate::leader::driver`]), and
//! a caller that hears nothing retries with the same idempotency key and gets the original result.

use async_nats::service::{NATS_SERVICE_ERROR, NATS_SERVICE_ERROR_CODE};
use futures::StreamExt;
use muster_schemas::api::{ApiError, Endpoint};
use muster_schemas::{headers, limits, Subjects};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::leader::contract::ApiCall;
use crate::leader::inbox::{Queued, WriteResult};

/// Write calls on `<prefix>.leader.>` while leading: parsed here, executed by the core, answered after commit.
pub async fn leader_api(
    client: async_nats::Client,
    subjects: Subjects,
    queue: mpsc::Sender<Queued>,
    stop: CancellationToken,
) -> Result<(), async_nats::SubscribeError> {
    let mut sub = client.subscribe(subjects.leader_all()).await?;
    let calls = tokio_util::task::TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = sub.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply) = msg.reply.clone() else { continue };
        let endpoint = subjects.leader_endpoint(msg.subject.as_str()).unwrap_or_default().to_string();
        let (queue, client) = (queue.clone(), client.clone());
        // Answered in its own task so a slow write does not hold up the next call's parsing; the core still
        // executes calls one batch at a time, in arrival order.
        let stop = stop.clone();
        calls.spawn(async move {
            let result = match parse_call(&endpoint, &msg.payload) {
                Ok(call) => execute(&queue, call, &stop).await,
                Err(e) => Some(Err(e)),
            };
            if let Some(result) = result {
                let (h, body) = api_reply(&result);
                let _ = client.publish_with_headers(reply, h, body).await;
            }
        });
    }
    let _ = sub.unsubscribe().await;
    calls.close();
    calls.wait().await;
    Ok(())
}

/// Queues `call` for the core and waits for its answer, at most [`limits::WRITE_TIMEOUT`]. `None`: the term ended
/// before the core answered (the batch was not committed, or the core is gone), and a deposed instance says
/// nothing (see the module docs).
async fn execute(queue: &mpsc::Sender<Queued>, call: ApiCall, stop: &CancellationToken) -> Option<WriteResult> {
    let (tx, rx) = oneshot::channel();
    queue.send(Queued::Api { call, respond: tx }).await.ok()?;
    match tokio::time::timeout(limits::WRITE_TIMEOUT, rx).await {
        Ok(answer) => answer.ok(),
        Err(_) if stop.is_cancelled() => None,
        Err(_) => Some(Err(ApiError::timeout("the leader did not answer in time"))),
    }
}

/// Parses one write call from its endpoint name and body (public for the fuzz targets, `fuzz/`).
#[doc(hidden)]
pub fn parse_call(endpoint: &str, payload: &[u8]) -> Result<ApiCall, ApiError> {
    if payload.len() > crate::stack::MAX_FILE_BYTES {
        return Err(ApiError::bad_request("request body too large"));
    }
    let text = || String::from_utf8(payload.to_vec()).map_err(|_| ApiError::bad_request("body must be UTF-8"));
    match Endpoint::from_name(endpoint) {
        Some(Endpoint::StackApply) => Ok(ApiCall::ApplyStack { source: text()? }),
        Some(Endpoint::BlueprintApply) => Ok(ApiCall::ApplyBlueprint { source: text()? }),
        Some(Endpoint::RequestCreate) => serde_json::from_slice(payload)
            .map(ApiCall::Request)
            .map_err(|e| ApiError::bad_request(format!("invalid request spec: {e}"))),
        Some(Endpoint::RequestCancel) => {
            let id = text()?.trim().parse().map_err(|_| ApiError::bad_request("request id must be a number"))?;
            Ok(ApiCall::Cancel { request: id })
        }
        Some(Endpoint::TokenCreate) => serde_json::from_slice(payload)
            .map(ApiCall::CreateToken)
            .map_err(|e| ApiError::bad_request(format!("invalid token spec: {e}"))),
        Some(Endpoint::TokenRevoke) => Ok(ApiCall::RevokeToken { id: text()?.trim().to_owned() }),
        Some(Endpoint::HostAccept) => Ok(ApiCall::AcceptHost { host: host_id(&text()?)? }),
        Some(Endpoint::HostReject) => Ok(ApiCall::RejectHost { host: host_id(&text()?)? }),
        _ => Err(ApiError::not_found(format!("no write endpoint {endpoint:?}"))),
    }
}

fn host_id(text: &str) -> Result<muster_schemas::HostId, ApiError> {
    muster_schemas::HostId::new(text.trim()).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// Headers and JSON body of a write's answer (errors as the services framework encodes them).
fn api_reply(result: &WriteResult) -> (async_nats::HeaderMap, bytes::Bytes) {
    let mut h = async_nats::HeaderMap::new();
    h.insert(headers::CONTENT_TYPE, headers::JSON);
    let body = match result {
        Ok(committed) => serde_json::to_vec(committed),
        Err(e) => {
            h.insert(NATS_SERVICE_ERROR, e.message.as_str());
            h.insert(NATS_SERVICE_ERROR_CODE, e.code.as_u16().to_string().as_str());
            serde_json::to_vec(e)
        }
    };
    // Serializing these plain structs cannot fail; should it ever, the caller still gets a JSON error.
    let body = body.unwrap_or_else(|e| format!(r#"{{"code":500,"message":"reply not encodable: {e}"}}"#).into_bytes());
    (h, body.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::api::{Committed, RequestCancelled, WriteReply};

    #[test]
    fn calls_are_parsed_by_endpoint_and_bad_ones_get_their_code() {
        assert!(matches!(parse_call("request.cancel", b" 7 "), Ok(ApiCall::Cancel { request: 7 })));
        assert!(matches!(parse_call("stack.apply", b"name = 'x'"), Ok(ApiCall::ApplyStack { .. })));
        let code = |endpoint: &str, body: &[u8]| parse_call(endpoint, body).unwrap_err().code;
        assert_eq!(code("request.cancel", b"seven"), muster_schemas::api::ApiErrorCode::BadRequest);
        assert_eq!(code("request.create", b"{"), muster_schemas::api::ApiErrorCode::BadRequest);
        assert_eq!(code("hosts", b""), muster_schemas::api::ApiErrorCode::NotFound);
        assert!(
            matches!(parse_call("host.accept", b"web-1\n"), Ok(ApiCall::AcceptHost { host }) if host.as_str() == "web-1")
        );
        assert!(matches!(parse_call("host.reject", b"web-1"), Ok(ApiCall::RejectHost { .. })));
        assert_eq!(code("host.accept", b"a.b"), muster_schemas::api::ApiErrorCode::BadRequest);
        assert!(matches!(parse_call("token.revoke", b" UABC "), Ok(ApiCall::RevokeToken { id }) if id == "UABC"));
        let spec = br#"{"id": "UABC", "hosts": "web-*", "uses": 3, "expires_at": 9}"#;
        assert!(matches!(parse_call("token.create", spec), Ok(ApiCall::CreateToken(s)) if s.uses == 3));
        assert_eq!(code("token.create", b"{}"), muster_schemas::api::ApiErrorCode::BadRequest);
        assert_eq!(code("enrollments", b""), muster_schemas::api::ApiErrorCode::NotFound, "a read is no write");
        assert_eq!(code("nope", b""), muster_schemas::api::ApiErrorCode::NotFound);
    }

    #[test]
    fn answers_carry_the_sequence_and_errors_their_headers() {
        let ok: WriteResult = Ok(Committed {
            reply: WriteReply::RequestCancelled(RequestCancelled { request: 3, aborted_tasks: 2 }),
            seq: 41,
        });
        let (_, body) = api_reply(&ok);
        assert_eq!(&body[..], br#"{"request":3,"aborted_tasks":2,"seq":41}"#);
        let (h, body) = api_reply(&Err(ApiError::not_found("no running request 9")));
        assert_eq!(h.get(NATS_SERVICE_ERROR_CODE).map(|v| v.as_str()), Some("404"));
        assert_eq!(h.get(NATS_SERVICE_ERROR).map(|v| v.as_str()), Some("no running request 9"));
        assert_eq!(&body[..], br#"{"code":404,"message":"no running request 9"}"#);
    }
}

//! Agents' catch-up, answered by every instance: on `<prefix>.catchup.<host>` (one queue group, any role, like the
//! API's reads) an agent asks for its stored commands in a range of `MUSTER_COMMANDS` sequences
//! ([`CatchUpRequest`]); the instance reads the host's command subject with its own JetStream access and answers
//! with the commands exactly as stored — headers (with the command signature), body bytes, stream sequence — at
//! most [`limits::CATCH_UP_CHUNK`] and [`limits::MAX_CATCH_UP_REPLY_BYTES`] per reply, saying whether more follow
//! ([`CatchUpReply`]).
//!
//! Agents never touch the consumer API: nats-server confines a consumer's filter by its create subject but not its
//! body, and a push consumer's deliver subject would let an agent make JetStream publish its commands anywhere
//! (`muster.txn`) as the account itself.
//!
//! Pure: [`prep`] (size, decode, version, host id of the subject, body host), [`Range`] (the request's bounds) and
//! [`ReplyBuilder`] (what one reply holds). I/O: [`serve`] and the reading of one range.
//!
//! The range is read with direct gets "next message on the subject from sequence n", which any replica of the
//! stream answers (a registration storm's catch-ups are spread over them). A replica only lags at the end of the
//! stream, so when one finds nothing before the end of the range — the rest removed (limits), or a lagging replica
//! — the stream leader is asked once (`STREAM.MSG.GET`, consistent) before the range counts as done.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind, Stream};
use async_nats::jetstream::{self};
use async_nats::HeaderMap;
use futures::StreamExt;
use muster_nats::wire::header_map;
use muster_schemas::messages::{CatchUpReply, CatchUpRequest, StoredCommand};
use muster_schemas::{codec, headers, limits, ErrorCode, HostId, Subjects, PROTOCOL_VERSION};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::metrics::{Metrics, ServerCounter};
use crate::prep::Rejection;

/// The queue group every instance answers catch-ups in (one instance answers each request).
pub const QUEUE_GROUP: &str = "muster-catchup";

/// How many catch-ups one instance reads at once. Each is a chain of JetStream round trips (little CPU); the bound
/// keeps a storm of catch-ups from flooding the stream's replicas with direct gets, as
/// [`crate::api::MAX_CONCURRENT_READS`] does for the API's reads.
pub const MAX_CONCURRENT_CATCH_UPS: usize = 8;

/// How long a request waits for one of the [`MAX_CONCURRENT_CATCH_UPS`] before it is answered `busy` (the agent
/// retries with backoff): well within the agent's request timeout.
const PERMIT_WAIT: Duration = Duration::from_secs(3);

/// How long one reply may spend reading: what was read by then is sent (with `more`), so a slow stream never makes
/// the agent's request time out with nothing.
const READ_BUDGET: Duration = Duration::from_secs(4);

/// Headers a direct get adds to a stored message; not part of what was stored.
const DIRECT_GET_HEADERS: [&str; 6] =
    ["Nats-Stream", "Nats-Subject", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Num-Pending", "Nats-Last-Sequence"];

/// Why the catch-up responder could not start.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpStartError {
    /// The subscription to `<prefix>.catchup.*` failed.
    #[error("catch-up: cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// `<prefix>.catchup.*`.
        subject: String,
        /// The client's error.
        source: async_nats::SubscribeError,
    },
    /// The commands stream's name is not valid (a bad prefix).
    #[error("catch-up: cannot use the commands stream: {0}")]
    Stream(async_nats::jetstream::context::GetStreamError),
}

// ---- pure ---------------------------------------------------------------------------------------------------------

/// Prep for `<prefix>.catchup.<host>`: size limit, decode, protocol version, the subject's host token a valid host
/// id, the body's host the same. Each failure is a [`Rejection`] the caller answers and counts.
pub fn prep(subjects: &Subjects, subject: &str, payload: &[u8]) -> Result<CatchUpRequest, Rejection> {
    let token = subjects.host_token(subject).unwrap_or_default();
    let subject_host = HostId::new(token);
    let reject = |code, message: String| Rejection { code, message, subject_host: subject_host.clone().ok() };
    if let Err(e) = &subject_host {
        return Err(reject(ErrorCode::InvalidHostId, format!("subject {subject:?}: {e}")));
    }
    let request: CatchUpRequest = match codec::decode(payload, limits::MAX_CATCH_UP_REQUEST_BYTES) {
        Ok(r) => r,
        Err(e @ codec::DecodeError::TooLarge { .. }) => return Err(reject(ErrorCode::TooLarge, e.to_string())),
        Err(e) => return Err(reject(ErrorCode::Malformed, e.to_string())),
    };
    if request.schema != PROTOCOL_VERSION {
        let message =
            format!("protocol version {} is not supported; this server speaks {PROTOCOL_VERSION}", request.schema);
        return Err(reject(ErrorCode::UnsupportedVersion, message));
    }
    if subject_host.as_ref().ok() != Some(&request.host) {
        let message = format!("subject names host {token:?} but the body names {:?}", request.host.as_str());
        return Err(reject(ErrorCode::HostMismatch, message));
    }
    Ok(request)
}

/// The bounds of one reply: sequences `from..=up_to`, at most `max` commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// The first sequence to read (at least 1).
    pub from: u64,
    /// The last sequence to read (inclusive).
    pub up_to: u64,
    /// Most commands in the reply: the request's, capped at [`limits::CATCH_UP_CHUNK`] (0 means the cap).
    pub max: usize,
}

impl Range {
    /// The range a request asks for.
    pub fn of(request: &CatchUpRequest) -> Self {
        let max = usize::try_from(request.max).unwrap_or(usize::MAX);
        let max = if max == 0 { limits::CATCH_UP_CHUNK } else { max.min(limits::CATCH_UP_CHUNK) };
        Self { from: request.from_seq.max(1), up_to: request.up_to_seq, max }
    }
}

/// Bytes a stored command adds to an encoded reply, at most: its body and header text plus MessagePack framing
/// (field names, lengths; generous).
pub fn entry_bytes(headers: &[(String, String)], payload_len: usize) -> usize {
    const ENTRY_FRAMING: usize = 48;
    const HEADER_FRAMING: usize = 12;
    headers.iter().map(|(n, v)| n.len() + v.len() + HEADER_FRAMING).sum::<usize>() + payload_len + ENTRY_FRAMING
}

/// What [`ReplyBuilder::offer`] did with a stored command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Added to the reply.
    Taken,
    /// The reply is full (count or bytes): the command goes in the next one.
    Full,
    /// Larger than [`limits::MAX_CATCH_UP_ENTRY_BYTES`]: never sent (the agent would refuse it anyway).
    Oversized,
}

/// One reply being gathered, within the range's count and [`limits::MAX_CATCH_UP_REPLY_BYTES`].
#[derive(Debug)]
pub struct ReplyBuilder {
    range: Range,
    /// The first sequence not yet covered.
    next: u64,
    commands: Vec<StoredCommand>,
    bytes: usize,
}

/// Bytes of a reply without commands: its tag, `next_seq`, `more` and framing.
const REPLY_FRAMING: usize = 64;

impl ReplyBuilder {
    /// An empty reply for `range`.
    pub fn new(range: Range) -> Self {
        Self { range, next: range.from, commands: Vec::new(), bytes: REPLY_FRAMING }
    }

    /// The first sequence still to read, or `None` when the reply is full or the range done.
    pub fn wants(&self) -> Option<u64> {
        (self.next <= self.range.up_to && self.commands.len() < self.range.max).then_some(self.next)
    }

    /// The stored command at `seq` (the next one on the subject at or after [`Self::wants`]).
    pub fn offer(&mut self, seq: u64, headers: Vec<(String, String)>, payload: &[u8]) -> Offer {
        if seq > self.range.up_to {
            self.next = self.range.up_to.saturating_add(1);
            return Offer::Full;
        }
        let size = entry_bytes(&headers, payload.len());
        if size > limits::MAX_CATCH_UP_ENTRY_BYTES {
            self.next = seq.saturating_add(1);
            return Offer::Oversized;
        }
        if self.commands.len() >= self.range.max || self.bytes + size > limits::MAX_CATCH_UP_REPLY_BYTES {
            self.next = seq;
            return Offer::Full;
        }
        self.bytes += size;
        self.commands.push(StoredCommand { seq, headers, payload: payload.to_vec() });
        self.next = seq.saturating_add(1);
        Offer::Taken
    }

    /// Nothing more on the subject up to the range's end.
    pub fn range_done(&mut self) {
        self.next = self.range.up_to.saturating_add(1);
    }

    /// Commands gathered so far.
    pub fn len(&self) -> usize {
        self.commands.len()
    }

    /// Whether no command was gathered.
    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The reply: the commands, where to go on, whether more may follow.
    pub fn finish(self) -> CatchUpReply {
        let more = self.next <= self.range.up_to;
        CatchUpReply::Commands { commands: self.commands, next_seq: self.next, more }
    }
}

/// A stored message's headers as it was stored: every value of every header, without the ones a direct get adds.
pub fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, values) in headers.iter() {
        if DIRECT_GET_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name.as_ref())) {
            continue;
        }
        out.extend(values.iter().map(|v| (name.to_string(), v.as_str().to_owned())));
    }
    out
}

// ---- I/O ----------------------------------------------------------------------------------------------------------

/// Answers catch-up requests until `shutdown`; requests in flight are answered before it returns.
pub async fn serve(
    client: async_nats::Client,
    js: jetstream::Context,
    subjects: Subjects,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> Result<(), CatchUpStartError> {
    let stream = js.get_stream_no_info(subjects.commands_stream()).await.map_err(CatchUpStartError::Stream)?;
    let subject = subjects.catchup_all();
    let mut requests = client
        .queue_subscribe(subject.clone(), QUEUE_GROUP.to_owned())
        .await
        .map_err(|source| CatchUpStartError::Subscribe { subject, source })?;
    let readers = Arc::new(Semaphore::new(MAX_CONCURRENT_CATCH_UPS));
    let calls = TaskTracker::new();
    loop {
        let msg = tokio::select! {
            _ = shutdown.cancelled() => break,
            m = requests.next() => match m { Some(m) => m, None => break },
        };
        let Some(reply_to) = msg.reply.clone() else { continue };
        let request = match prep(&subjects, msg.subject.as_str(), &msg.payload) {
            Ok(r) => r,
            Err(r) => {
                metrics.inc(ServerCounter::CatchUpRejected(r.code));
                debug!(subject = %msg.subject, code = %r.code, "catch-up request rejected: {}", r.message);
                let host = r.subject_host.as_ref().map_or("", |h| h.as_str()).to_owned();
                let body = CatchUpReply::Rejected { code: r.code, message: r.message };
                send(&client, reply_to, &host, Some(r.code), &body).await;
                continue;
            }
        };
        let (client, stream, subjects, metrics, readers) =
            (client.clone(), stream.clone(), subjects.clone(), metrics.clone(), readers.clone());
        calls.spawn(async move {
            let host = request.host.as_str().to_owned();
            let reply = match tokio::time::timeout(PERMIT_WAIT, readers.acquire_owned()).await {
                Ok(Ok(_permit)) => answer(&stream, &subjects, &metrics, &request).await,
                _ => {
                    metrics.inc(ServerCounter::CatchUpRejected(ErrorCode::Busy));
                    let message = "too many catch-ups in flight on this instance; retry later".to_owned();
                    CatchUpReply::Rejected { code: ErrorCode::Busy, message }
                }
            };
            let error = match &reply {
                CatchUpReply::Rejected { code, .. } => Some(*code),
                CatchUpReply::Commands { .. } => None,
            };
            send(&client, reply_to, &host, error, &reply).await;
        });
    }
    let _ = requests.unsubscribe().await;
    calls.close();
    calls.wait().await;
    Ok(())
}

async fn send(
    client: &async_nats::Client,
    to: async_nats::Subject,
    host: &str,
    error: Option<ErrorCode>,
    body: &CatchUpReply,
) {
    let h = header_map(headers::catch_up_reply(host, error));
    if let Err(e) = client.publish_with_headers(to, h, codec::encode(body).into()).await {
        warn!(error = %e, host, "catch-up reply not sent");
    }
}

/// Reads one reply's worth of the host's command subject.
async fn answer(stream: &Stream<()>, subjects: &Subjects, metrics: &Metrics, request: &CatchUpRequest) -> CatchUpReply {
    let subject = subjects.cmd(&request.host);
    let mut reply = ReplyBuilder::new(Range::of(request));
    let deadline = tokio::time::Instant::now() + READ_BUDGET;
    while let Some(seq) = reply.wants() {
        if tokio::time::Instant::now() >= deadline && !reply.is_empty() {
            break;
        }
        let message = match next_on_subject(stream, &subject, seq).await {
            Ok(Some(m)) => m,
            Ok(None) => {
                reply.range_done();
                break;
            }
            Err(e) => {
                if !reply.is_empty() {
                    // What was read is good: send it; the agent asks again for the rest.
                    debug!(error = %e, host = %request.host, seq, "catch-up read cut short");
                    break;
                }
                metrics.inc(ServerCounter::CatchUpRejected(ErrorCode::Internal));
                warn!(error = %e, host = %request.host, seq, "cannot read the commands stream for a catch-up");
                return CatchUpReply::Rejected { code: ErrorCode::Internal, message: e };
            }
        };
        match reply.offer(message.sequence, stored_headers(&message.headers), &message.payload) {
            Offer::Taken => {}
            Offer::Full => break,
            Offer::Oversized => {
                metrics.inc(ServerCounter::CatchUpOversized);
                warn!(host = %request.host, seq = message.sequence, bytes = message.payload.len(), "stored command too large for a catch-up; skipped");
            }
        }
    }
    metrics.inc(ServerCounter::CatchUpServed);
    metrics.add(ServerCounter::CatchUpCommands, reply.len() as u64);
    reply.finish()
}

/// The first message on `subject` at or after `seq`: a direct get (any replica); when it finds none, the stream
/// leader's answer (a replica may lag behind the end of the stream). `None`: there is none.
async fn next_on_subject(stream: &Stream<()>, subject: &str, seq: u64) -> Result<Option<StreamMessage>, String> {
    match stream.direct_get_next_for_subject(subject, Some(seq)).await {
        Ok(m) => return Ok(Some(m)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => {}
        Err(e) => return Err(format!("direct get of {subject} from {seq}: {e}")),
    }
    match stream.raw_message_builder().sequence(seq).next_by_subject(subject).send().await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(format!("message get of {subject} from {seq}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::codec::encode;

    fn s() -> Subjects {
        Subjects::default()
    }

    fn request(host: &str, from_seq: u64, up_to_seq: u64) -> CatchUpRequest {
        CatchUpRequest { schema: PROTOCOL_VERSION, host: HostId::new(host).unwrap(), from_seq, up_to_seq, max: 0 }
    }

    #[test]
    fn prep_accepts_a_request_for_the_subjects_host_and_names_each_bad_one() {
        assert_eq!(prep(&s(), "muster.catchup.h1", &encode(&request("h1", 3, 9))).unwrap(), request("h1", 3, 9));
        let code = |subject: &str, payload: &[u8]| prep(&s(), subject, payload).unwrap_err().code;
        assert_eq!(code("muster.catchup.h2", &encode(&request("h1", 1, 2))), ErrorCode::HostMismatch);
        assert_eq!(code("muster.catchup.", &encode(&request("h1", 1, 2))), ErrorCode::InvalidHostId);
        assert_eq!(code("muster.catchup.a*", &encode(&request("h1", 1, 2))), ErrorCode::InvalidHostId);
        assert_eq!(code("muster.catchup.h1", b"\xc1"), ErrorCode::Malformed);
        assert_eq!(code("muster.catchup.h1", &vec![0; limits::MAX_CATCH_UP_REQUEST_BYTES + 1]), ErrorCode::TooLarge);
        let mut old = request("h1", 1, 2);
        old.schema = 99;
        assert_eq!(code("muster.catchup.h1", &encode(&old)), ErrorCode::UnsupportedVersion);
        let r = prep(&s(), "muster.catchup.h2", &encode(&request("h1", 1, 2))).unwrap_err();
        assert_eq!(r.subject_host.map(|h| h.to_string()), Some("h2".to_owned()));
    }

    #[test]
    fn a_range_is_capped_at_the_chunk() {
        let mut r = request("h1", 0, 5);
        assert_eq!(Range::of(&r), Range { from: 1, up_to: 5, max: limits::CATCH_UP_CHUNK });
        r.max = 10;
        assert_eq!(Range::of(&r).max, 10);
        r.max = u32::MAX;
        assert_eq!(Range::of(&r).max, limits::CATCH_UP_CHUNK);
    }

    fn h() -> Vec<(String, String)> {
        vec![("Muster-Kind".into(), "command".into()), ("Muster-Signature".into(), "x".repeat(86))]
    }

    #[test]
    fn a_reply_stops_at_the_count_the_range_end_or_the_byte_budget() {
        let mut b = ReplyBuilder::new(Range { from: 1, up_to: 100, max: 2 });
        assert_eq!(b.offer(3, h(), b"a"), Offer::Taken);
        assert_eq!(b.offer(7, h(), b"b"), Offer::Taken);
        assert_eq!(b.wants(), None);
        assert_eq!(b.offer(9, h(), b"c"), Offer::Full);
        match b.finish() {
            CatchUpReply::Commands { commands, next_seq, more } => {
                assert_eq!(commands.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 7]);
                assert_eq!((next_seq, more), (9, true));
            }
            other => panic!("{other:?}"),
        }

        let mut b = ReplyBuilder::new(Range { from: 5, up_to: 10, max: 1000 });
        assert_eq!(b.wants(), Some(5));
        assert_eq!(b.offer(12, h(), b"later"), Offer::Full);
        assert_eq!(b.finish(), CatchUpReply::Commands { commands: vec![], next_seq: 11, more: false });

        let mut b = ReplyBuilder::new(Range { from: 1, up_to: 10, max: 1000 });
        b.range_done();
        assert_eq!(b.wants(), None);

        // Bodies of the largest size: three fit, the fourth waits for the next reply.
        let big = vec![0xaau8; limits::MAX_COMMAND_BYTES];
        let mut b = ReplyBuilder::new(Range { from: 1, up_to: 10, max: 1000 });
        let offers: Vec<Offer> = (1..=4).map(|seq| b.offer(seq, h(), &big)).collect();
        assert_eq!(offers, [Offer::Taken, Offer::Taken, Offer::Taken, Offer::Full]);
        let reply = b.finish();
        let encoded = encode(&reply);
        assert!(encoded.len() <= limits::MAX_CATCH_UP_REPLY_BYTES, "{}", encoded.len());
        let CatchUpReply::Commands { next_seq, more, .. } = reply else { panic!("not commands") };
        assert_eq!((next_seq, more), (4, true));
    }

    #[test]
    fn an_oversized_stored_message_is_skipped_not_repeated() {
        let mut b = ReplyBuilder::new(Range { from: 1, up_to: 10, max: 1000 });
        assert_eq!(b.offer(2, h(), &vec![0; limits::MAX_CATCH_UP_ENTRY_BYTES]), Offer::Oversized);
        assert_eq!(b.wants(), Some(3));
    }

    #[test]
    fn the_size_bound_holds_for_encoded_replies() {
        let mut b = ReplyBuilder::new(Range { from: 1, up_to: 100_000, max: 1000 });
        let mut seq = 1;
        while b.offer(seq, h(), &vec![0xffu8; 300]) == Offer::Taken {
            seq += 1;
        }
        let n = b.len();
        let bound: usize = REPLY_FRAMING + n * entry_bytes(&h(), 300);
        let encoded = encode(&b.finish());
        assert!(encoded.len() <= bound, "{} > {bound}", encoded.len());
        assert_eq!(n, 1000);
    }

    #[test]
    fn stored_headers_leave_out_what_a_direct_get_adds() {
        let mut m = HeaderMap::new();
        m.insert("Muster-Kind", "command");
        m.append("X-Multi", "1");
        m.append("X-Multi", "2");
        m.insert("Nats-Sequence", "5");
        m.insert("Nats-Stream", "MUSTER_COMMANDS");
        m.insert("Nats-Subject", "muster.cmd.h1");
        m.insert("Nats-Time-Stamp", "2024-01-01T00:00:00Z");
        m.insert("Nats-Msg-Id", "t1-a1");
        let mut got = stored_headers(&m);
        got.sort();
        let want: Vec<(String, String)> =
            [("Muster-Kind", "command"), ("Nats-Msg-Id", "t1-a1"), ("X-Multi", "1"), ("X-Multi", "2")]
                .into_iter()
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .collect();
        assert_eq!(got, want);
    }
}

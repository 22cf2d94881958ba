//! The leader's input queue: what the listeners ([`crate::ingest`], [`crate::writes`]) and the command publisher
//! hand the leader loop, each input with what its answer needs (an admission permit, the stored message to ack, the
//! caller waiting for an answer).

use async_nats::jetstream;
use muster_schemas::api::{ApiError, Committed, WriteReply};
use muster_schemas::commands::Report;
use muster_schemas::{Heartbeat, RegisterRequest};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};

use super::contract::{ApiCall, Outgoing};

/// Inputs queued for the core. Heartbeats of 100k hosts at a 5 s interval arrive at 20k/s; this absorbs a second
/// of them while a commit is in flight, and beyond that the NATS subscription buffer takes the backpressure.
pub const INPUT_CAPACITY: usize = 32_768;

/// The leader's input queue while this instance leads (`None` while it follows).
pub type LeaderSlot = watch::Receiver<Option<mpsc::Sender<Queued>>>;

/// A write call's answer as the caller receives it: the endpoint's reply with the log sequence it committed at
/// (read-your-writes on any instance), or the API error.
pub type WriteResult = Result<Committed<WriteReply>, ApiError>;

/// What listeners hand the leader: an input plus what its answer needs.
pub enum Queued {
    /// A registration holding an admission permit until its reply is sent.
    Register {
        /// The request, decoded once by Prep.
        req: Box<RegisterRequest>,
        /// Where the reply goes: the agent's request inbox (`None` if it sent none; then nothing is answered).
        reply: Option<String>,
        /// Admission permit, released once the reply is sent.
        permit: OwnedSemaphorePermit,
    },
    /// A heartbeat (its arrival is already in the arrival record).
    Heartbeat {
        /// The heartbeat, decoded once by Prep.
        hb: Heartbeat,
        /// The agent's control inbox.
        reply: Option<String>,
    },
    /// A report, acked once its effect is committed.
    Report {
        /// The report, decoded once by Prep.
        report: Box<Report>,
        /// The stored message to ack (boxed: it is large, heartbeats are the common input); `None` for the early
        /// copy of a final report heard on the core subscription.
        msg: Option<Box<jetstream::Message>>,
    },
    /// An operator's write call.
    Api {
        /// The write, already parsed from the endpoint and body.
        call: ApiCall,
        /// Where the answer goes.
        respond: oneshot::Sender<WriteResult>,
    },
    /// Commands the publisher stored, with their stream sequences.
    Delivered(Vec<(Outgoing, u64)>),
}

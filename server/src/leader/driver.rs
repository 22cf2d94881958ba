//! The one order in which a batch is performed, written once: the leader's NATS shell and the unit tests' in-memory
//! shell both go through [`drive`], so what the tests check is what the leader does.
//!
//! 1. **Propose**: every input of the batch is stepped through the core, then [`LeaderCore::ready`] returns the
//!    batch's [`Ready`].
//! 2. **Commit and Sync**: [`Ready::ops`] are appended to the log (fenced) and the shell waits until its own
//!    applier has written them to redb. A batch without ops that still tells anyone something that depends on its
//!    state (a reply, a refusal's ack, an API answer, an event, a command: [`Ready::needs_leadership`]) commits an
//!    empty txn instead: a **barrier**, which proves that this leader still holds the lease and that nobody
//!    appended since — so a deposed leader that has not noticed yet never answers from its stale state (it would
//!    term-ack reports for tasks its successor created). Counters and the acks of reports whose effect is
//!    already committed (duplicates) are true from any leader and need no barrier. If committing
//!    fails, leadership ends and nothing the batch did is performed or told: its callers get no answer (the
//!    leader that holds the log answers them, or they retry), its reports stay un-acked and are redelivered.
//! 3. **Final**: [`Ready::effects`] are performed in order: replies, report acks, API answers, change events,
//!    counters. Only now may anyone learn of the batch's changes.
//! 4. **Commands**: [`Ready::publish`] goes to the command publisher, which stores the commands while later
//!    batches are stepped and returns their sequences as [`Input::Delivered`]. No agent can run a command for
//!    work the log does not have.
//! 5. **Suspects**: the last arrivals of [`Ready::suspects`] are looked up in the arrival record and come back as
//!    [`Input::Heard`], stepped first in the next batch.

use muster_schemas::{HostId, TxnOp, UnixMillis};
use tokio::time::Instant;
use tracing::debug;

use super::contract::{Effect, Input, Outgoing, Ready};
use super::core::LeaderCore;
use crate::metrics::ServerCounter;

/// What performs a [`Ready`]: the leader's I/O, or the unit tests' in-memory stand-in.
// `async fn` without a `Send` bound is what is wanted: both shells are driven on the one task that owns the core.
#[allow(async_fn_in_trait)]
pub trait Shell {
    /// Why committing failed (it ends the leadership).
    type Error;

    /// Appends `ops` to the log (fenced: it fails once another leader appended or the lease may have expired) and
    /// waits until this instance has applied them. Empty `ops`: a barrier, an empty txn proving the leadership.
    async fn commit(&mut self, ops: Vec<TxnOp>, wall: UnixMillis) -> Result<(), Self::Error>;

    /// Performs a committed batch's effects, in order.
    async fn perform(&mut self, effects: Vec<Effect>);

    /// Hands a committed batch's commands to the publisher; their sequences come back as [`Input::Delivered`].
    fn publish(&mut self, commands: Vec<Outgoing>);

    /// Looks up the last arrivals of `suspects`; they come back as [`Input::Heard`].
    fn look_up(&mut self, suspects: Vec<HostId>);
}

/// Steps one batch and performs its [`Ready`] in the order of the module docs. An error ends the leadership.
pub async fn drive<S: Shell>(
    core: &mut LeaderCore,
    shell: &mut S,
    batch: impl IntoIterator<Item = Input>,
    now: Instant,
    wall: UnixMillis,
) -> Result<(), S::Error> {
    let mut inputs = 0usize;
    for input in batch {
        core.step(input, now, wall);
        inputs += 1;
    }
    let Ready { ops, mut effects, publish, suspects, needs_leadership } = core.ready();
    debug!(
        inputs,
        ops = ops.len(),
        effects = effects.len(),
        step_us = now.elapsed().as_micros() as u64,
        "batch stepped"
    );
    let barrier = ops.is_empty() && needs_leadership;
    if barrier {
        effects.push(Effect::Count(ServerCounter::LeaderBarriers));
    }
    if !ops.is_empty() || barrier {
        // A failed commit is told to nobody: a "failed" answer could be false (the append may have landed), and a
        // deposed leader must not answer at all.
        shell.commit(ops, wall).await?;
    }
    shell.perform(effects).await;
    if !publish.is_empty() {
        shell.publish(publish);
    }
    if !suspects.is_empty() {
        shell.look_up(suspects);
    }
    Ok(())
}

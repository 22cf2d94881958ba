//! Protocol version, size limits and the timeouts of a write call. Every size limit is checked before decoding, so
//! an oversized payload costs nothing.

use std::time::Duration;

/// The protocol version this build speaks. Carried in every message body (`schema`) and in the `Muster-Schema`
/// header; a peer speaking another version is refused with [`crate::ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 1;

/// Largest registration request: host facts with many mounts and addresses stay well under 16 KiB; 64 KiB leaves
/// room for labels without letting one agent make the leader buffer megabytes.
pub const MAX_REGISTER_BYTES: usize = 64 * 1024;

/// Largest heartbeat. A heartbeat is a digest, a few hundred bytes; anything bigger is a bug or an attack.
pub const MAX_HEARTBEAT_BYTES: usize = 4 * 1024;

/// Largest API request (selectors and ids only).
pub const MAX_API_REQUEST_BYTES: usize = 64 * 1024;

/// Largest transaction-log entry we will write: below nats-server's default `max_payload` (1 MiB) with room for
/// headers. The proposer splits batches to stay under it.
pub const MAX_TXN_BYTES: usize = 900 * 1024;

/// Largest report: a final task report carries at most [`MAX_OUTPUT_BYTES`] of stdout and of stderr.
pub const MAX_REPORT_BYTES: usize = 2 * MAX_OUTPUT_BYTES + 16 * 1024;

/// Output kept per stream (stdout, stderr) of a task: the head and the tail, half each. Enough for a stack trace,
/// small enough that a fan-out of 100k tasks does not store gigabytes.
pub const MAX_OUTPUT_BYTES: usize = 64 * 1024;

/// Largest command message (argv, env and the component list of a Configure).
pub const MAX_COMMAND_BYTES: usize = 256 * 1024;

/// Most commands one catch-up reply carries (and one catch-up batch the agent hands its runner): bounds the
/// agent's memory when a host has a long backlog, while a cancel following its execution within one batch is still
/// recognised.
pub const CATCH_UP_CHUNK: usize = 1_000;

/// Largest catch-up request (`<prefix>.catchup.<host>`): a few numbers and the host id.
pub const MAX_CATCH_UP_REQUEST_BYTES: usize = 1024;

/// Largest catch-up reply the servers send: the stored commands it carries stop before this (three of the largest
/// fit; at least one always does: a stored command larger than [`MAX_CATCH_UP_ENTRY_BYTES`] is not sent), well
/// under nats-server's default `max_payload` (1 MiB), with room for the reply's headers.
pub const MAX_CATCH_UP_REPLY_BYTES: usize = 800 * 1024;

/// Largest stored command a catch-up reply carries: a command body up to [`MAX_COMMAND_BYTES`] and 16 KiB of
/// headers. A larger one (which the agent would refuse anyway) is skipped and counted by the server.
pub const MAX_CATCH_UP_ENTRY_BYTES: usize = MAX_COMMAND_BYTES + 16 * 1024;

/// How long the leader gives one write call (`<prefix>.leader.*`: a stack or blueprint apply, a request create or
/// cancel) to commit before it answers with an error. A blueprint apply over 100,000 hosts plans and stores every
/// host's commands in one call; measured, that stays well under a minute on the bench machine.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an API instance waits for the leader's answer to a write it forwarded: the leader's own limit plus
/// 5 s for the forward and the answer to cross NATS twice, so the leader's timeout error (which says what timed
/// out) arrives before this instance gives up with a vaguer one.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(WRITE_TIMEOUT.as_secs() + 5);

/// How long the CLI waits for the answer to a write: the forwarding instance's limit plus another 5 s, for the
/// same reason one level up — the innermost timeout is the one the operator sees.
pub const CLI_WRITE_TIMEOUT: Duration = Duration::from_secs(FORWARD_TIMEOUT.as_secs() + 5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_write_timeout_outlasts_the_one_inside_it() {
        assert_eq!((WRITE_TIMEOUT.as_secs(), FORWARD_TIMEOUT.as_secs(), CLI_WRITE_TIMEOUT.as_secs()), (60, 65, 70));
    }

    #[test]
    fn a_catch_up_reply_fits_nats_payloads_and_always_one_command() {
        const { assert!(MAX_CATCH_UP_ENTRY_BYTES <= MAX_CATCH_UP_REPLY_BYTES) };
        const { assert!(MAX_CATCH_UP_REPLY_BYTES + 128 * 1024 <= 1024 * 1024) };
    }
}

//! The one clock. Pure code never reads it: the leader core, the agent's queue and protocol machines take the time
//! as an input ([`Now`], or its parts), and the shell that steps them reads it here, once per step, so a test can
//! drive them with any time it likes.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use muster_schemas::UnixMillis;

/// Wall-clock milliseconds since the Unix epoch, the one time format on the wire. A clock set before 1970 reads 0
/// rather than failing: the value only ever labels records and events for people.
pub fn unix_millis() -> UnixMillis {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// One reading of both clocks: the monotonic one for deadlines and intervals (it never jumps, and keeps running
/// through a SIGSTOP), the wall clock for timestamps that go into records and onto the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for timers.
    pub at: Instant,
    /// Wall-clock time, for records.
    pub wall: UnixMillis,
}

impl Now {
    /// Reads both clocks.
    pub fn read() -> Self {
        Self { at: Instant::now(), wall: unix_millis() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_after_2020_and_do_not_go_back() {
        const JAN_2020: UnixMillis = 1_577_836_800_000;
        let a = Now::read();
        let b = Now::read();
        assert!(a.wall > JAN_2020, "{}", a.wall);
        assert!(b.at >= a.at);
    }
}

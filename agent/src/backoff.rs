//! Retry and heartbeat timing: exponential backoff with full jitter (registration, JetStream retries), and the
//! ±10% heartbeat jitter.
//!
//! Randomness is passed in, so the bounds are unit-tested with a seeded generator.

use std::time::Duration;

use rand::Rng;

/// First registration retry ceiling: short enough that a leader restart costs an agent about a second.
pub const REGISTER_BACKOFF_INITIAL: Duration = Duration::from_millis(500);

/// Largest registration retry ceiling: with full jitter, a crowd of agents spreads over 30 s, which bounds a
/// registration storm against a recovering leader while keeping recovery within one Ambari heartbeat-loss window.
pub const REGISTER_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// First JetStream retry ceiling (report publishes, catch-up reads): a stream leader election takes a second or
/// two, so retries start fast.
pub const JETSTREAM_BACKOFF_INITIAL: Duration = Duration::from_millis(200);

/// Largest JetStream retry ceiling: a report waits at most about 5 s after JetStream is back, while an agent
/// retrying through an outage sends well under one publish per second.
pub const JETSTREAM_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest `retry_after_ms` the agent honours. A server asking for more is assumed to be buggy; an agent that
/// silently sleeps for an hour is worse than one that asks again after five minutes.
pub const MAX_SERVER_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Heartbeat delays vary by ±10% so agents started together (a rack power-on, a swarm) do not beat in lockstep.
pub const HEARTBEAT_JITTER: f64 = 0.10;

/// Exponential backoff (×2 per failure) between `initial` and `max`, with full jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling after the first failure.
    pub initial: Duration,
    /// The ceiling the doubling stops at: no delay is ever longer.
    pub max: Duration,
}

impl Backoff {
    /// The registration backoff: 500 ms → 30 s.
    pub const REGISTER: Backoff = Backoff { initial: REGISTER_BACKOFF_INITIAL, max: REGISTER_BACKOFF_MAX };

    /// The JetStream retry backoff (reports, catch-up): 200 ms → 5 s.
    pub const JETSTREAM_RETRY: Backoff = Backoff { initial: JETSTREAM_BACKOFF_INITIAL, max: JETSTREAM_BACKOFF_MAX };

    /// The ceiling after `failures` consecutive failures: `initial × 2^(failures-1)`, at most `max`; zero before
    /// any failure.
    pub fn ceiling(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        self.initial.checked_mul(factor).map_or(self.max, |d| d.min(self.max))
    }

    /// A delay drawn uniformly from `[0, ceiling(failures)]` ("full jitter"): it spreads retrying agents best.
    pub fn delay(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(failures);
        if ceiling.is_zero() {
            return Duration::ZERO;
        }
        Duration::from_nanos(rng.random_range(0..=duration_nanos(ceiling)))
    }
}

/// Honours a server's `retry_after`: never sooner than asked, up to 20% later so agents told the same number do
/// not return together, capped at [`MAX_SERVER_RETRY_AFTER`].
pub fn server_retry_after(after: Duration, rng: &mut impl Rng) -> Duration {
    let after = after.min(MAX_SERVER_RETRY_AFTER);
    let spread = duration_nanos(after) / 5;
    after + Duration::from_nanos(rng.random_range(0..=spread))
}

/// `interval` varied by up to ±`fraction` (e.g. [`HEARTBEAT_JITTER`]).
pub fn jitter(interval: Duration, fraction: f64, rng: &mut impl Rng) -> Duration {
    let fraction = fraction.clamp(0.0, 1.0);
    if fraction == 0.0 {
        return interval;
    }
    interval.mul_f64(rng.random_range(1.0 - fraction..=1.0 + fraction))
}

fn duration_nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    #[test]
    fn ceiling_doubles_from_500ms_to_30s() {
        let b = Backoff::REGISTER;
        let expected_ms = [0, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000];
        for (failures, ms) in expected_ms.iter().enumerate() {
            assert_eq!(b.ceiling(failures as u32), Duration::from_millis(*ms), "failures={failures}");
        }
        assert_eq!(b.ceiling(u32::MAX), REGISTER_BACKOFF_MAX);
    }

    #[test]
    fn jetstream_retry_ceiling_goes_from_200ms_to_5s() {
        let b = Backoff::JETSTREAM_RETRY;
        let expected_ms = [0, 200, 400, 800, 1_600, 3_200, 5_000, 5_000];
        for (failures, ms) in expected_ms.iter().enumerate() {
            assert_eq!(b.ceiling(failures as u32), Duration::from_millis(*ms), "failures={failures}");
        }
    }

    #[test]
    fn delay_stays_within_full_jitter_bounds() {
        let mut rng = SmallRng::seed_from_u64(7);
        let b = Backoff::REGISTER;
        for failures in 0..40 {
            for _ in 0..200 {
                assert!(b.delay(failures, &mut rng) <= b.ceiling(failures));
            }
        }
        // Full jitter really spreads: over many draws some land in the lower and some in the upper half.
        let draws: Vec<_> = (0..1_000).map(|_| b.delay(10, &mut rng)).collect();
        assert!(draws.iter().any(|d| *d < REGISTER_BACKOFF_MAX / 2));
        assert!(draws.iter().any(|d| *d > REGISTER_BACKOFF_MAX / 2));
    }

    #[test]
    fn server_retry_after_is_never_early_and_capped() {
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..500 {
            let d = server_retry_after(Duration::from_secs(2), &mut rng);
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2_400), "{d:?}");
            let capped = server_retry_after(Duration::from_secs(86_400), &mut rng);
            assert!(capped >= MAX_SERVER_RETRY_AFTER && capped <= MAX_SERVER_RETRY_AFTER.mul_f64(1.2));
        }
    }

    #[test]
    fn heartbeat_jitter_is_within_ten_percent() {
        let mut rng = SmallRng::seed_from_u64(3);
        let interval = Duration::from_secs(5);
        for _ in 0..1_000 {
            let d = jitter(interval, HEARTBEAT_JITTER, &mut rng);
            assert!(d >= Duration::from_millis(4_500) && d <= Duration::from_millis(5_500), "{d:?}");
        }
        assert_eq!(jitter(interval, 0.0, &mut rng), interval);
    }
}

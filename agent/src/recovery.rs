//! Auto-restart limits (Ambari's recovery manager): how often the agent may restart one component on its own.
//!
//! A component that should run but is found dead is restarted by the runner, but a component that dies at once
//! every time must not be restarted in a tight loop: at most `max_per_window` restarts in any `window`, at least
//! `min_gap` apart, and at most `lifetime_max` in the agent's life. Pure: the caller passes the time in.

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use crate::params::RestartLimits;

/// Why a restart is not allowed now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Auto-restart is switched off.
    Disabled,
    /// The last restart was too recent; allowed again after `wait`.
    MinGap {
        /// Time until the gap has passed.
        wait: Duration,
    },
    /// The window's budget is used up; allowed again after `wait`.
    Window {
        /// Time until the oldest restart leaves the window.
        wait: Duration,
    },
    /// The lifetime cap is reached: never again in this agent run.
    Lifetime,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("auto-restart is disabled"),
            Self::MinGap { wait } => write!(f, "the last restart was too recent (next allowed in {}s)", wait.as_secs()),
            Self::Window { wait } => {
                write!(f, "too many restarts in the window (next allowed in {}s)", wait.as_secs())
            }
            Self::Lifetime => f.write_str("the lifetime cap is reached"),
        }
    }
}

/// One component's restart history.
#[derive(Debug, Clone)]
pub struct RestartLimiter {
    limits: RestartLimits,
    /// Restarts within the last window, oldest first.
    recent: VecDeque<Instant>,
    lifetime: u32,
}

impl RestartLimiter {
    /// A limiter with no restarts yet.
    pub fn new(limits: RestartLimits) -> Self {
        Self { limits, recent: VecDeque::new(), lifetime: 0 }
    }

    /// Whether a restart is allowed at `now`.
    pub fn check(&self, now: Instant) -> Result<(), Refusal> {
        let l = &self.limits;
        if !l.enabled {
            return Err(Refusal::Disabled);
        }
        if self.lifetime >= l.lifetime_max {
            return Err(Refusal::Lifetime);
        }
        if let Some(last) = self.recent.back() {
            let since = now.saturating_duration_since(*last);
            if since < l.min_gap {
                return Err(Refusal::MinGap { wait: l.min_gap - since });
            }
        }
        let in_window: Vec<&Instant> =
            self.recent.iter().filter(|t| now.saturating_duration_since(**t) < l.window).collect();
        if in_window.len() >= l.max_per_window as usize {
            let oldest = in_window.first().map_or(now, |t| **t);
            return Err(Refusal::Window { wait: l.window - now.saturating_duration_since(oldest) });
        }
        Ok(())
    }

    /// Checks, and if allowed records a restart at `now`.
    pub fn acquire(&mut self, now: Instant) -> Result<(), Refusal> {
        self.check(now)?;
        let window = self.limits.window;
        // Entries older than the window no longer count; the last one is kept for the gap check.
        while self.recent.len() > 1 && self.recent.front().is_some_and(|t| now.saturating_duration_since(*t) >= window)
        {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        self.lifetime += 1;
        Ok(())
    }

    /// Restarts recorded over the agent's lifetime.
    pub fn lifetime(&self) -> u32 {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn limits(max_per_window: u32, window: Duration, min_gap: Duration, lifetime_max: u32) -> RestartLimits {
        RestartLimits { enabled: true, max_per_window, window, min_gap, lifetime_max }
    }

    #[test]
    fn defaults_are_ambaris() {
        let d = RestartLimits::default();
        assert!(d.enabled);
        assert_eq!((d.max_per_window, d.window, d.min_gap, d.lifetime_max), (6, 60 * MIN, 5 * MIN, 24));
    }

    #[test]
    fn min_gap_spaces_restarts() {
        let t0 = Instant::now();
        let mut l = RestartLimiter::new(limits(10, 60 * MIN, 5 * MIN, 100));
        assert_eq!(l.acquire(t0), Ok(()));
        assert_eq!(l.check(t0 + MIN), Err(Refusal::MinGap { wait: 4 * MIN }));
        assert_eq!(
            l.acquire(t0 + 5 * MIN - Duration::from_millis(1)),
            Err(Refusal::MinGap { wait: Duration::from_millis(1) })
        );
        assert_eq!(l.acquire(t0 + 5 * MIN), Ok(()));
        assert_eq!(l.lifetime(), 2);
    }

    #[test]
    fn window_caps_restarts_and_slides() {
        let t0 = Instant::now();
        let mut l = RestartLimiter::new(limits(3, 60 * MIN, 5 * MIN, 100));
        for i in 0..3 {
            assert_eq!(l.acquire(t0 + i * 5 * MIN), Ok(()), "restart {i}");
        }
        // Fourth inside the hour: refused until the first leaves the window at t0 + 60 min.
        assert_eq!(l.acquire(t0 + 20 * MIN), Err(Refusal::Window { wait: 40 * MIN }));
        assert_eq!(
            l.acquire(t0 + 60 * MIN - Duration::from_secs(1)),
            Err(Refusal::Window { wait: Duration::from_secs(1) })
        );
        assert_eq!(l.acquire(t0 + 60 * MIN), Ok(()));
        // At t0+65 the gap has passed and t0+5 has left the window: t0+10 and t0+60 remain, one slot is free.
        assert_eq!(l.check(t0 + 64 * MIN), Err(Refusal::MinGap { wait: MIN }));
        assert_eq!(l.acquire(t0 + 65 * MIN), Ok(()));
        // Window full again (t0+10, t0+60, t0+65) until t0+10 leaves it at t0+70.
        let mut tight = l.clone();
        tight.limits.min_gap = Duration::ZERO;
        assert_eq!(tight.check(t0 + 69 * MIN), Err(Refusal::Window { wait: MIN }));
        assert_eq!(tight.check(t0 + 70 * MIN), Ok(()));
    }

    #[test]
    fn lifetime_cap_is_final() {
        let t0 = Instant::now();
        let mut l = RestartLimiter::new(limits(100, MIN, Duration::ZERO, 2));
        assert_eq!(l.acquire(t0), Ok(()));
        assert_eq!(l.acquire(t0 + MIN), Ok(()));
        assert_eq!(l.acquire(t0 + 1_000 * MIN), Err(Refusal::Lifetime));
        assert_eq!(l.lifetime(), 2);
    }

    #[test]
    fn disabled_refuses_everything() {
        let l = RestartLimiter::new(RestartLimits { enabled: false, ..RestartLimits::default() });
        assert_eq!(l.check(Instant::now()), Err(Refusal::Disabled));
    }

    #[test]
    fn zero_budgets_refuse() {
        let t0 = Instant::now();
        assert_eq!(
            RestartLimiter::new(limits(0, MIN, Duration::ZERO, 10)).check(t0),
            Err(Refusal::Window { wait: MIN })
        );
        assert_eq!(RestartLimiter::new(limits(5, MIN, Duration::ZERO, 0)).check(t0), Err(Refusal::Lifetime));
    }

    #[test]
    fn history_stays_bounded() {
        let t0 = Instant::now();
        let mut l = RestartLimiter::new(limits(2, MIN, Duration::ZERO, u32::MAX));
        for i in 0..1_000u32 {
            l.acquire(t0 + MIN * i).unwrap();
        }
        assert!(l.recent.len() <= 2, "{}", l.recent.len());
    }
}

//! The agent side of the registration/heartbeat protocol as a pure state machine: no I/O, no clock, no randomness.
//!
//! [`transition`] steps one [`SessionEvent`] into a [`SessionState`] and returns the [`Effect`]s the session shell
//! ([`crate::session`]) must perform. The table:
//!
//! | state          | event                              | next state          | effects                       |
//! |----------------|------------------------------------|---------------------|-------------------------------|
//! | Registering(f) | RegisterAccepted                   | Heartbeating        | StartHeartbeats               |
//! | Registering(f) | RegisterRejected, retryable        | Registering(f+1)    | Register after server/backoff |
//! | Registering(f) | RegisterRejected, not retryable    | Refused             | Refuse                        |
//! | Registering(f) | RegisterUnanswered                 | Registering(f+1)    | Register after backoff        |
//! | Registering(f) | ReregisterRequested / Reconnected / HeartbeatRejected | Registering(f) | — (already registering) |
//! | Heartbeating   | ReregisterRequested / Reconnected  | Registering(0)      | Register now                  |
//! | Heartbeating   | HeartbeatRejected                  | Heartbeating        | — (logged by the shell)       |
//! | Heartbeating   | RegisterAccepted/Rejected/Unanswered | illegal: no registration is in flight            |
//! | Refused        | any                                | illegal: the session is over                      |

use std::fmt;
use std::time::Duration;

use muster_schemas::ErrorCode;

/// Shortest heartbeat interval accepted from a server. A server bug sending 0 must not turn every agent into a
/// busy loop flooding NATS; 50 ms still allows fast test clusters.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_millis(50);

/// Longest heartbeat interval accepted from a server: beyond 10 minutes a dead host would go unnoticed for far
/// longer than any reference system tolerates (Ambari: 2 minutes).
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(600);

/// Where the session is in the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionState {
    /// Registering, or waiting to retry; `failures` consecutive attempts have failed so far.
    Registering {
        /// Consecutive failed attempts; drives the backoff.
        failures: u32,
    },
    /// Registered: heartbeating every `interval` (plus jitter).
    Heartbeating {
        /// Heartbeat interval from the registration reply, clamped to sane bounds.
        interval: Duration,
        /// Leader epoch that accepted the registration.
        epoch: u64,
    },
    /// The server refused the registration for a reason retrying cannot fix. Terminal.
    Refused {
        /// The non-retryable code the server refused with.
        code: ErrorCode,
        /// The server's explanation, returned in the session's error.
        message: String,
    },
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Registering { failures } => write!(f, "Registering(failures={failures})"),
            Self::Heartbeating { interval, epoch } => {
                write!(f, "Heartbeating(interval={interval:?}, epoch={epoch})")
            }
            Self::Refused { code, .. } => write!(f, "Refused({code})"),
        }
    }
}

/// Why a registration got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unanswered {
    /// Nobody answered within the registration timeout.
    TimedOut,
    /// NATS reported that nobody listens on the registration subject (no leader yet).
    NoResponders,
    /// The request could not be sent or completed.
    Transport(String),
    /// An answer came but was not a registration reply.
    BadReply(String),
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TimedOut => f.write_str("timed out"),
            Self::NoResponders => f.write_str("no responders (is a muster-server leader running?)"),
            Self::Transport(e) => write!(f, "transport error: {e}"),
            Self::BadReply(e) => write!(f, "bad reply: {e}"),
        }
    }
}

/// What happened, as the shell observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    /// The leader accepted the registration.
    RegisterAccepted {
        /// Heartbeat interval the server asks for.
        heartbeat_interval_ms: u64,
        /// The accepting leader's epoch.
        epoch: u64,
    },
    /// The leader refused the registration.
    RegisterRejected {
        /// Why, as a code; [`ErrorCode::is_retryable`] decides between retrying and giving up.
        code: ErrorCode,
        /// Why, in the server's words, for the log.
        message: String,
        /// For retryable codes, how long the server wants the agent to wait.
        retry_after_ms: Option<u64>,
    },
    /// The registration got no usable answer.
    RegisterUnanswered(Unanswered),
    /// The server answered a heartbeat with "register again".
    ReregisterRequested {
        /// Why the server asks (e.g. it does not know the host after a failover), for the log.
        reason: String,
    },
    /// The server refused a heartbeat.
    HeartbeatRejected {
        /// Why, as a code (a version skew or a bug: heartbeats are not retried).
        code: ErrorCode,
        /// Why, in the server's words, for the log.
        message: String,
    },
    /// The NATS connection was re-established.
    Reconnected,
}

impl SessionEvent {
    /// A short name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Self::RegisterAccepted { .. } => "RegisterAccepted",
            Self::RegisterRejected { .. } => "RegisterRejected",
            Self::RegisterUnanswered(_) => "RegisterUnanswered",
            Self::ReregisterRequested { .. } => "ReregisterRequested",
            Self::HeartbeatRejected { .. } => "HeartbeatRejected",
            Self::Reconnected => "Reconnected",
        }
    }
}

/// When to send the next registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDelay {
    /// At once: the server asked for a re-registration, or NATS reconnected.
    Now,
    /// After the backoff for this many consecutive failures (jittered by the shell).
    Backoff {
        /// Consecutive failures so far.
        failures: u32,
    },
    /// After what the server asked for (spread a little by the shell).
    ServerAsked(Duration),
}

/// What the shell must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Send a registration after `after`.
    Register {
        /// How long to wait first: nothing, a backoff the shell draws, or what the server asked for.
        after: RetryDelay,
    },
    /// Send a heartbeat now, then every `interval` (jittered).
    StartHeartbeats {
        /// The heartbeat interval the registration granted, already clamped to sane bounds.
        interval: Duration,
    },
    /// End the session: the server refused the host for good.
    Refuse {
        /// The non-retryable code the server refused with (e.g. `invalid_host_id`).
        code: ErrorCode,
        /// The server's explanation, logged for the operator.
        message: String,
    },
}

/// An event that cannot happen in a state; the shell logs and counts it and keeps its state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("illegal session transition: {event} in state {state}", event = .event.name())]
pub struct InvalidTransition {
    /// The state the event arrived in.
    pub state: SessionState,
    /// The event the state does not allow.
    pub event: SessionEvent,
}

/// Steps `event` into `state`.
pub fn transition(state: &SessionState, event: SessionEvent) -> Result<(SessionState, Vec<Effect>), InvalidTransition> {
    use SessionEvent as E;
    use SessionState as S;
    let illegal = |event| Err(InvalidTransition { state: state.clone(), event });
    match (state, event) {
        (S::Registering { .. }, E::RegisterAccepted { heartbeat_interval_ms, epoch }) => {
            let interval =
                Duration::from_millis(heartbeat_interval_ms).clamp(MIN_HEARTBEAT_INTERVAL, MAX_HEARTBEAT_INTERVAL);
            Ok((S::Heartbeating { interval, epoch }, vec![Effect::StartHeartbeats { interval }]))
        }
        (S::Registering { failures }, E::RegisterRejected { code, message, retry_after_ms }) => {
            if !code.is_retryable() {
                let effects = vec![Effect::Refuse { code, message: message.clone() }];
                return Ok((S::Refused { code, message }, effects));
            }
            let failures = failures.saturating_add(1);
            let after = match retry_after_ms {
                Some(ms) => RetryDelay::ServerAsked(Duration::from_millis(ms)),
                None => RetryDelay::Backoff { failures },
            };
            Ok((S::Registering { failures }, vec![Effect::Register { after }]))
        }
        (S::Registering { failures }, E::RegisterUnanswered(_)) => {
            let failures = failures.saturating_add(1);
            Ok((S::Registering { failures }, vec![Effect::Register { after: RetryDelay::Backoff { failures } }]))
        }
        // A registration is already under way (or scheduled): it answers all of these.
        (S::Registering { .. }, E::ReregisterRequested { .. } | E::Reconnected | E::HeartbeatRejected { .. }) => {
            Ok((state.clone(), vec![]))
        }
        (S::Heartbeating { .. }, E::ReregisterRequested { .. } | E::Reconnected) => {
            Ok((S::Registering { failures: 0 }, vec![Effect::Register { after: RetryDelay::Now }]))
        }
        (S::Heartbeating { .. }, E::HeartbeatRejected { .. }) => Ok((state.clone(), vec![])),
        (
            S::Heartbeating { .. },
            event @ (E::RegisterAccepted { .. } | E::RegisterRejected { .. } | E::RegisterUnanswered(_)),
        ) => illegal(event),
        (S::Refused { .. }, event) => illegal(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registering(failures: u32) -> SessionState {
        SessionState::Registering { failures }
    }

    fn heartbeating() -> SessionState {
        SessionState::Heartbeating { interval: Duration::from_secs(5), epoch: 3 }
    }

    fn refused() -> SessionState {
        SessionState::Refused { code: ErrorCode::UnsupportedVersion, message: "v9 only".into() }
    }

    fn accepted(ms: u64) -> SessionEvent {
        SessionEvent::RegisterAccepted { heartbeat_interval_ms: ms, epoch: 4 }
    }

    fn rejected(code: ErrorCode, retry_after_ms: Option<u64>) -> SessionEvent {
        SessionEvent::RegisterRejected { code, message: "no".into(), retry_after_ms }
    }

    fn reregister() -> SessionEvent {
        SessionEvent::ReregisterRequested { reason: "unknown host".into() }
    }

    fn hb_rejected() -> SessionEvent {
        SessionEvent::HeartbeatRejected { code: ErrorCode::HostMismatch, message: "bug".into() }
    }

    fn register(after: RetryDelay) -> Vec<Effect> {
        vec![Effect::Register { after }]
    }

    #[test]
    fn every_row_of_the_transition_table() {
        let five_s = Duration::from_secs(5);
        let rows: Vec<(SessionState, SessionEvent, SessionState, Vec<Effect>)> = vec![
            (
                registering(2),
                accepted(5_000),
                SessionState::Heartbeating { interval: five_s, epoch: 4 },
                vec![Effect::StartHeartbeats { interval: five_s }],
            ),
            (
                registering(0),
                rejected(ErrorCode::Busy, Some(1_500)),
                registering(1),
                register(RetryDelay::ServerAsked(Duration::from_millis(1_500))),
            ),
            (
                registering(3),
                rejected(ErrorCode::NotLeader, None),
                registering(4),
                register(RetryDelay::Backoff { failures: 4 }),
            ),
            (
                registering(0),
                rejected(ErrorCode::Internal, None),
                registering(1),
                register(RetryDelay::Backoff { failures: 1 }),
            ),
            (
                registering(0),
                rejected(ErrorCode::UnsupportedVersion, None),
                SessionState::Refused { code: ErrorCode::UnsupportedVersion, message: "no".into() },
                vec![Effect::Refuse { code: ErrorCode::UnsupportedVersion, message: "no".into() }],
            ),
            (
                registering(1),
                SessionEvent::RegisterUnanswered(Unanswered::TimedOut),
                registering(2),
                register(RetryDelay::Backoff { failures: 2 }),
            ),
            (
                registering(0),
                SessionEvent::RegisterUnanswered(Unanswered::NoResponders),
                registering(1),
                register(RetryDelay::Backoff { failures: 1 }),
            ),
            (registering(u32::MAX), SessionEvent::RegisterUnanswered(Unanswered::TimedOut), registering(u32::MAX), {
                register(RetryDelay::Backoff { failures: u32::MAX })
            }),
            (registering(1), reregister(), registering(1), vec![]),
            (registering(1), SessionEvent::Reconnected, registering(1), vec![]),
            (registering(1), hb_rejected(), registering(1), vec![]),
            (heartbeating(), reregister(), registering(0), register(RetryDelay::Now)),
            (heartbeating(), SessionEvent::Reconnected, registering(0), register(RetryDelay::Now)),
            (heartbeating(), hb_rejected(), heartbeating(), vec![]),
        ];
        for (state, event, next, effects) in rows {
            let label = format!("{state} + {}", event.name());
            assert_eq!(transition(&state, event), Ok((next, effects)), "{label}");
        }
    }

    #[test]
    fn every_non_retryable_rejection_refuses() {
        for code in [
            ErrorCode::UnsupportedVersion,
            ErrorCode::InvalidHostId,
            ErrorCode::HostMismatch,
            ErrorCode::Malformed,
            ErrorCode::TooLarge,
        ] {
            let (next, effects) = transition(&registering(0), rejected(code, Some(10))).unwrap();
            assert!(matches!(next, SessionState::Refused { code: c, .. } if c == code), "{code}");
            assert!(matches!(effects.as_slice(), [Effect::Refuse { .. }]), "{code}");
        }
    }

    #[test]
    fn heartbeat_interval_is_clamped() {
        let (state, _) = transition(&registering(0), accepted(0)).unwrap();
        assert_eq!(state, SessionState::Heartbeating { interval: MIN_HEARTBEAT_INTERVAL, epoch: 4 });
        let (state, _) = transition(&registering(0), accepted(u64::MAX)).unwrap();
        assert_eq!(state, SessionState::Heartbeating { interval: MAX_HEARTBEAT_INTERVAL, epoch: 4 });
    }

    #[test]
    fn illegal_transitions_carry_both_sides() {
        let illegal = vec![
            (heartbeating(), accepted(1_000)),
            (heartbeating(), rejected(ErrorCode::Busy, None)),
            (heartbeating(), SessionEvent::RegisterUnanswered(Unanswered::TimedOut)),
            (refused(), accepted(1_000)),
            (refused(), rejected(ErrorCode::Busy, None)),
            (refused(), SessionEvent::RegisterUnanswered(Unanswered::TimedOut)),
            (refused(), reregister()),
            (refused(), hb_rejected()),
            (refused(), SessionEvent::Reconnected),
        ];
        for (state, event) in illegal {
            let err = transition(&state, event.clone()).expect_err(&format!("{state} + {}", event.name()));
            assert_eq!(err, InvalidTransition { state, event });
            assert!(err.to_string().contains("illegal session transition"));
        }
    }
}

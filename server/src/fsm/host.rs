//! The host FSM (Ambari's host state machine, with its state names), as a pure function.
//!
//! ```text
//! INIT | WAITING | HEALTHY | UNHEALTHY | HEARTBEAT_LOST --Register-->        WAITING_FOR_HOST_STATUS_UPDATES
//! WAITING | HEALTHY | UNHEALTHY          --Heartbeat{healthy}-->            HEALTHY
//! WAITING | HEALTHY | UNHEALTHY          --Heartbeat{unhealthy}-->          UNHEALTHY
//! WAITING | HEALTHY | UNHEALTHY          --HeartbeatLost-->                 HEARTBEAT_LOST
//! ```
//! Every other (state, event) pair is an [`InvalidTransition`]. In particular a heartbeat never revives a
//! HEARTBEAT_LOST host (the agent is told to register, so its status is re-established), and registration is legal
//! from every state (Ambari resets the FSM to INIT before applying it), so a returning host can never stay lost
//! (AMBARI-24845). A WAITING host moves on at its first heartbeat, which carries its full status.

use muster_schemas::HostState;

/// What can happen to a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostEvent {
    /// The agent registered.
    Register,
    /// A heartbeat arrived, reporting the host healthy or not.
    Heartbeat {
        /// No problems reported.
        healthy: bool,
    },
    /// No heartbeat within `interval × misses`.
    HeartbeatLost,
}

/// An event that is not legal in the host's state: named, carrying both, logged and counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal host transition: {event:?} in state {from}")]
pub struct InvalidTransition {
    /// The state the host was in.
    pub from: HostState,
    /// The event that does not apply to it.
    pub event: HostEvent,
}

/// The host's next state after `event`.
pub fn transition(from: HostState, event: HostEvent) -> Result<HostState, InvalidTransition> {
    use HostEvent as E;
    use HostState as S;
    match (from, event) {
        (_, E::Register) => Ok(S::WaitingForHostStatusUpdates),
        (s, E::Heartbeat { healthy }) if s.expects_heartbeats() => Ok(if healthy { S::Healthy } else { S::Unhealthy }),
        (s, E::HeartbeatLost) if s.expects_heartbeats() => Ok(S::HeartbeatLost),
        (from, event) => Err(InvalidTransition { from, event }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use HostEvent as E;
    use HostState as S;

    const ALL_STATES: [S; 5] = [S::Init, S::WaitingForHostStatusUpdates, S::Healthy, S::Unhealthy, S::HeartbeatLost];
    const ALL_EVENTS: [E; 4] =
        [E::Register, E::Heartbeat { healthy: true }, E::Heartbeat { healthy: false }, E::HeartbeatLost];

    /// The whole table: every (state, event) pair, with `None` for illegal ones.
    fn expected(s: S, e: E) -> Option<S> {
        Some(match (s, e) {
            (_, E::Register) => S::WaitingForHostStatusUpdates,
            (S::WaitingForHostStatusUpdates | S::Healthy | S::Unhealthy, E::Heartbeat { healthy: true }) => S::Healthy,
            (S::WaitingForHostStatusUpdates | S::Healthy | S::Unhealthy, E::Heartbeat { healthy: false }) => {
                S::Unhealthy
            }
            (S::WaitingForHostStatusUpdates | S::Healthy | S::Unhealthy, E::HeartbeatLost) => S::HeartbeatLost,
            _ => return None,
        })
    }

    #[test]
    fn table() {
        let rows: &[(S, E, Option<S>)] = &[
            (S::Init, E::Register, Some(S::WaitingForHostStatusUpdates)),
            (S::WaitingForHostStatusUpdates, E::Register, Some(S::WaitingForHostStatusUpdates)),
            (S::Healthy, E::Register, Some(S::WaitingForHostStatusUpdates)),
            (S::Unhealthy, E::Register, Some(S::WaitingForHostStatusUpdates)),
            (S::HeartbeatLost, E::Register, Some(S::WaitingForHostStatusUpdates)),
            (S::WaitingForHostStatusUpdates, E::Heartbeat { healthy: true }, Some(S::Healthy)),
            (S::WaitingForHostStatusUpdates, E::Heartbeat { healthy: false }, Some(S::Unhealthy)),
            (S::Healthy, E::Heartbeat { healthy: true }, Some(S::Healthy)),
            (S::Healthy, E::Heartbeat { healthy: false }, Some(S::Unhealthy)),
            (S::Unhealthy, E::Heartbeat { healthy: true }, Some(S::Healthy)),
            (S::Unhealthy, E::Heartbeat { healthy: false }, Some(S::Unhealthy)),
            (S::WaitingForHostStatusUpdates, E::HeartbeatLost, Some(S::HeartbeatLost)),
            (S::Healthy, E::HeartbeatLost, Some(S::HeartbeatLost)),
            (S::Unhealthy, E::HeartbeatLost, Some(S::HeartbeatLost)),
            // Illegal: a host that is not registered cannot heartbeat or be lost.
            (S::Init, E::Heartbeat { healthy: true }, None),
            (S::Init, E::Heartbeat { healthy: false }, None),
            (S::Init, E::HeartbeatLost, None),
            // Illegal: a lost host must register again; it cannot be lost twice.
            (S::HeartbeatLost, E::Heartbeat { healthy: true }, None),
            (S::HeartbeatLost, E::Heartbeat { healthy: false }, None),
            (S::HeartbeatLost, E::HeartbeatLost, None),
        ];
        assert_eq!(rows.len(), ALL_STATES.len() * ALL_EVENTS.len(), "every pair has a row");
        for &(from, event, want) in rows {
            let got = transition(from, event);
            match want {
                Some(to) => assert_eq!(got, Ok(to), "{from} + {event:?}"),
                None => assert_eq!(got, Err(InvalidTransition { from, event }), "{from} + {event:?}"),
            }
            assert_eq!(expected(from, event), want, "table row {from} + {event:?} disagrees with the reference");
        }
    }

    #[test]
    fn a_returning_host_never_stays_lost() {
        let s = transition(S::HeartbeatLost, E::Register).unwrap();
        assert_eq!(transition(s, E::Heartbeat { healthy: true }), Ok(S::Healthy));
    }
}

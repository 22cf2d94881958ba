//! The host-component FSM (Ambari's service-component-host state machine, with its state names), as a pure
//! function.
//!
//! ```text
//! INIT | INSTALL_FAILED | UNINSTALLED | INSTALLED --Install--> INSTALLING
//! INSTALLING   --InstallOk--> INSTALLED          --InstallFailed--> INSTALL_FAILED
//! INSTALLED    --Start--> STARTING   --Uninstall--> UNINSTALLING   --Disable--> DISABLED
//! STARTING     --StartOk--> STARTED  --StartFailed--> INSTALLED
//! STARTED      --Stop--> STOPPING
//! STOPPING     --StopOk--> INSTALLED --StopFailed--> STARTED
//! UNINSTALLING --UninstallOk--> UNINSTALLED --UninstallFailed--> INSTALLED
//! DISABLED     --Restore--> INSTALLED
//! status running:     INSTALLED | STARTING | STARTED | UNKNOWN --> STARTED;  STOPPING stays
//! status not running: STARTED | STOPPING | INSTALLED | UNKNOWN --> INSTALLED;  STARTING stays
//! status in INIT, INSTALLING, INSTALL_FAILED, UNINSTALLING, UNINSTALLED, DISABLED: ignored (same state)
//! HostLost: INSTALLING | INSTALLED | STARTING | STARTED | STOPPING | UNINSTALLING | UNKNOWN --> UNKNOWN;
//!           components not installed (INIT, INSTALL_FAILED, UNINSTALLED) and DISABLED keep their state
//! ```
//! Everything else is an [`InvalidTransition`]: e.g. START of a component that is not INSTALLED, or a command result
//! for a command that is not running.

use muster_schemas::cluster::ComponentState;
use muster_schemas::commands::{RoleCommand, TaskPhase};

/// What can happen to a host component.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ComponentEvent {
    /// An INSTALL task was queued.
    Install,
    /// The INSTALL task ended COMPLETED: INSTALLING → INSTALLED.
    InstallOk,
    /// INSTALL failed, timed out or was aborted.
    InstallFailed,
    /// A START task was queued.
    Start,
    /// The START task ended COMPLETED: STARTING → STARTED.
    StartOk,
    /// The START task failed, timed out or was aborted: STARTING → INSTALLED.
    StartFailed,
    /// A STOP task was queued.
    Stop,
    /// The STOP task ended COMPLETED: STOPPING → INSTALLED.
    StopOk,
    /// The STOP task failed, timed out or was aborted: STOPPING → STARTED (taken as still running).
    StopFailed,
    /// An UNINSTALL task was queued.
    Uninstall,
    /// The UNINSTALL task ended COMPLETED: UNINSTALLING → UNINSTALLED.
    UninstallOk,
    /// The UNINSTALL task failed, timed out or was aborted: UNINSTALLING → INSTALLED.
    UninstallFailed,
    /// The agent's status check ran.
    Status {
        /// The status command exited 0 (running); any other outcome means not running.
        running: bool,
    },
    /// The host was declared HEARTBEAT_LOST.
    HostLost,
    /// The operator disabled the component.
    Disable,
    /// The operator restored a disabled component.
    Restore,
}

impl ComponentEvent {
    /// The event that queuing `command` causes (`None` for commands that do not move the FSM).
    pub fn queued(command: &RoleCommand) -> Option<Self> {
        match command {
            RoleCommand::Install => Some(Self::Install),
            RoleCommand::Start => Some(Self::Start),
            RoleCommand::Stop => Some(Self::Stop),
            RoleCommand::Uninstall => Some(Self::Uninstall),
            RoleCommand::Custom(_) | RoleCommand::Run => None,
        }
    }

    /// The event a final result of `command` causes.
    pub fn finished(command: &RoleCommand, phase: TaskPhase) -> Option<Self> {
        let ok = phase == TaskPhase::Completed;
        match command {
            RoleCommand::Install => Some(if ok { Self::InstallOk } else { Self::InstallFailed }),
            RoleCommand::Start => Some(if ok { Self::StartOk } else { Self::StartFailed }),
            RoleCommand::Stop => Some(if ok { Self::StopOk } else { Self::StopFailed }),
            RoleCommand::Uninstall => Some(if ok { Self::UninstallOk } else { Self::UninstallFailed }),
            RoleCommand::Custom(_) | RoleCommand::Run => None,
        }
    }
}

/// An event that is not legal in the component's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("illegal component transition: {event:?} in state {from}")]
pub struct InvalidTransition {
    /// The state the component was in.
    pub from: ComponentState,
    /// The event that does not apply to it.
    pub event: ComponentEvent,
}

/// The component's next state after `event`.
pub fn transition(from: ComponentState, event: ComponentEvent) -> Result<ComponentState, InvalidTransition> {
    use ComponentEvent as E;
    use ComponentState as S;
    let to = match (from, event) {
        (S::Init | S::InstallFailed | S::Uninstalled | S::Installed, E::Install) => S::Installing,
        (S::Installing, E::InstallOk) => S::Installed,
        (S::Installing, E::InstallFailed) => S::InstallFailed,
        (S::Installed, E::Start) => S::Starting,
        (S::Installed, E::Uninstall) => S::Uninstalling,
        (S::Installed, E::Disable) => S::Disabled,
        (S::Starting, E::StartOk) => S::Started,
        (S::Starting, E::StartFailed) => S::Installed,
        (S::Started, E::Stop) => S::Stopping,
        (S::Stopping, E::StopOk) => S::Installed,
        (S::Stopping, E::StopFailed) => S::Started,
        (S::Uninstalling, E::UninstallOk) => S::Uninstalled,
        (S::Uninstalling, E::UninstallFailed) => S::Installed,
        (S::Disabled, E::Restore) => S::Installed,
        (S::Installed | S::Starting | S::Started | S::Unknown, E::Status { running: true }) => S::Started,
        (S::Stopping, E::Status { running: true }) => S::Stopping,
        (S::Started | S::Stopping | S::Installed | S::Unknown, E::Status { running: false }) => S::Installed,
        (S::Starting, E::Status { running: false }) => S::Starting,
        (
            s @ (S::Init | S::Installing | S::InstallFailed | S::Uninstalling | S::Uninstalled | S::Disabled),
            E::Status { .. },
        ) => s,
        (
            S::Installing | S::Installed | S::Starting | S::Started | S::Stopping | S::Uninstalling | S::Unknown,
            E::HostLost,
        ) => S::Unknown,
        (s @ (S::Init | S::InstallFailed | S::Uninstalled | S::Disabled), E::HostLost) => s,
        (from, event) => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ComponentEvent as E;
    use ComponentState as S;

    const STATES: [S; 11] = [
        S::Init,
        S::Installing,
        S::InstallFailed,
        S::Installed,
        S::Starting,
        S::Started,
        S::Stopping,
        S::Uninstalling,
        S::Uninstalled,
        S::Unknown,
        S::Disabled,
    ];
    const EVENTS: [E; 17] = [
        E::Install,
        E::InstallOk,
        E::InstallFailed,
        E::Start,
        E::StartOk,
        E::StartFailed,
        E::Stop,
        E::StopOk,
        E::StopFailed,
        E::Uninstall,
        E::UninstallOk,
        E::UninstallFailed,
        E::Status { running: true },
        E::Status { running: false },
        E::HostLost,
        E::Disable,
        E::Restore,
    ];

    /// Every legal row of the reference table; every other (state, event) pair must be refused.
    const LEGAL: &[(S, E, S)] = &[
        (S::Init, E::Install, S::Installing),
        (S::InstallFailed, E::Install, S::Installing),
        (S::Uninstalled, E::Install, S::Installing),
        (S::Installed, E::Install, S::Installing),
        (S::Installing, E::InstallOk, S::Installed),
        (S::Installing, E::InstallFailed, S::InstallFailed),
        (S::Installed, E::Start, S::Starting),
        (S::Installed, E::Uninstall, S::Uninstalling),
        (S::Installed, E::Disable, S::Disabled),
        (S::Starting, E::StartOk, S::Started),
        (S::Starting, E::StartFailed, S::Installed),
        (S::Started, E::Stop, S::Stopping),
        (S::Stopping, E::StopOk, S::Installed),
        (S::Stopping, E::StopFailed, S::Started),
        (S::Uninstalling, E::UninstallOk, S::Uninstalled),
        (S::Uninstalling, E::UninstallFailed, S::Installed),
        (S::Disabled, E::Restore, S::Installed),
        (S::Installed, E::Status { running: true }, S::Started),
        (S::Starting, E::Status { running: true }, S::Started),
        (S::Started, E::Status { running: true }, S::Started),
        (S::Unknown, E::Status { running: true }, S::Started),
        (S::Stopping, E::Status { running: true }, S::Stopping),
        (S::Started, E::Status { running: false }, S::Installed),
        (S::Stopping, E::Status { running: false }, S::Installed),
        (S::Installed, E::Status { running: false }, S::Installed),
        (S::Unknown, E::Status { running: false }, S::Installed),
        (S::Starting, E::Status { running: false }, S::Starting),
        (S::Init, E::Status { running: true }, S::Init),
        (S::Init, E::Status { running: false }, S::Init),
        (S::Installing, E::Status { running: true }, S::Installing),
        (S::Installing, E::Status { running: false }, S::Installing),
        (S::InstallFailed, E::Status { running: true }, S::InstallFailed),
        (S::InstallFailed, E::Status { running: false }, S::InstallFailed),
        (S::Uninstalling, E::Status { running: true }, S::Uninstalling),
        (S::Uninstalling, E::Status { running: false }, S::Uninstalling),
        (S::Uninstalled, E::Status { running: true }, S::Uninstalled),
        (S::Uninstalled, E::Status { running: false }, S::Uninstalled),
        (S::Disabled, E::Status { running: true }, S::Disabled),
        (S::Disabled, E::Status { running: false }, S::Disabled),
        (S::Installing, E::HostLost, S::Unknown),
        (S::Installed, E::HostLost, S::Unknown),
        (S::Starting, E::HostLost, S::Unknown),
        (S::Started, E::HostLost, S::Unknown),
        (S::Stopping, E::HostLost, S::Unknown),
        (S::Uninstalling, E::HostLost, S::Unknown),
        (S::Unknown, E::HostLost, S::Unknown),
        (S::Init, E::HostLost, S::Init),
        (S::InstallFailed, E::HostLost, S::InstallFailed),
        (S::Uninstalled, E::HostLost, S::Uninstalled),
        (S::Disabled, E::HostLost, S::Disabled),
    ];

    #[test]
    fn every_pair_of_the_table() {
        let mut legal = 0;
        for from in STATES {
            for event in EVENTS {
                let want = LEGAL.iter().find(|(s, e, _)| *s == from && *e == event).map(|(_, _, to)| *to);
                match want {
                    Some(to) => {
                        legal += 1;
                        assert_eq!(transition(from, event), Ok(to), "{from} + {event:?}");
                    }
                    None => assert_eq!(
                        transition(from, event),
                        Err(InvalidTransition { from, event }),
                        "{from} + {event:?}"
                    ),
                }
            }
        }
        assert_eq!(legal, LEGAL.len(), "LEGAL has duplicate rows");
    }

    #[test]
    fn illegal_examples_carry_both_states() {
        let e = transition(S::Init, E::Start).unwrap_err();
        assert_eq!((e.from, e.event), (S::Init, E::Start));
        assert!(e.to_string().contains("INIT"));
        assert!(transition(S::Started, E::Start).is_err());
        assert!(transition(S::Unknown, E::Stop).is_err());
    }

    #[test]
    fn task_results_map_to_events() {
        assert_eq!(ComponentEvent::finished(&RoleCommand::Start, TaskPhase::Completed), Some(E::StartOk));
        assert_eq!(ComponentEvent::finished(&RoleCommand::Start, TaskPhase::TimedOut), Some(E::StartFailed));
        assert_eq!(ComponentEvent::finished(&RoleCommand::Run, TaskPhase::Completed), None);
        assert_eq!(ComponentEvent::queued(&RoleCommand::Stop), Some(E::Stop));
    }
}

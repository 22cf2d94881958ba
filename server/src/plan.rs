//! Stage planning (Ambari's role-command order), pure: an operator action over selected host components becomes
//! ordered stages of tasks.
//!
//! - Hosts are split into rolling batches (`batch` hosts each, 0 = all at once); every batch runs its whole plan
//!   before the next batch starts, so `restart --batch 2` stops and starts two hosts at a time.
//! - Within a batch, phases run in order (STOP before START for a restart, INSTALL before START when a component is
//!   not installed yet), and within a phase components run in dependency levels: START `master` before `worker` when
//!   `worker` depends on `master`; STOP in the reverse order.
//! - Only the gap is planned: START skips what is STARTED, INSTALL what is installed, STOP what is not running.

use std::collections::{BTreeMap, BTreeSet};

use muster_schemas::cluster::{ComponentState, RequestAction, StackDef};
use muster_schemas::commands::{Category, CommandSpec, ComponentRef, RoleCommand};
use muster_schemas::HostId;

/// Upper-case verb of an action, for request descriptions (`START`, `CUSTOM:reload`).
pub fn verb(action: &RequestAction) -> String {
    match action {
        // The command's own name keeps its case: it is looked up in the stack as written.
        RequestAction::Custom(name) => format!("CUSTOM:{name}"),
        other => other.to_string().to_ascii_uppercase(),
    }
}

/// One host component the action applies to, with its current state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The host it is mapped to.
    pub host: HostId,
    /// The service and component.
    pub component: ComponentRef,
    /// Its state now.
    pub state: ComponentState,
}

/// A task to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedTask {
    /// The host it runs on.
    pub host: HostId,
    /// The component it works on (`None` for ad-hoc runs).
    pub component: Option<ComponentRef>,
    /// What it does to the component (INSTALL, START, ...; RUN for ad-hoc runs).
    pub command: RoleCommand,
    /// The command line, environment and timeout, copied from the stack at planning time.
    pub spec: CommandSpec,
}

/// A stage to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedStage {
    /// Name shown to operators.
    pub name: String,
    /// Its tasks, all dispatched at once when the stage starts.
    pub tasks: Vec<PlannedTask>,
}

fn not_installed(s: ComponentState) -> bool {
    matches!(s, ComponentState::Init | ComponentState::InstallFailed | ComponentState::Uninstalled)
}

/// Dependency level of each component among `names`: 0 for those depending on none of the others.
fn levels(stack: &StackDef, names: &BTreeSet<String>) -> BTreeMap<String, usize> {
    fn level(stack: &StackDef, n: &str, names: &BTreeSet<String>, memo: &mut BTreeMap<String, usize>) -> usize {
        if let Some(l) = memo.get(n) {
            return *l;
        }
        // Stacks are validated acyclic, so the recursion ends.
        let deps = stack.component(n).map(|(_, c)| c.depends_on.clone()).unwrap_or_default();
        let l = deps.iter().filter(|d| names.contains(*d)).map(|d| level(stack, d, names, memo) + 1).max().unwrap_or(0);
        memo.insert(n.to_string(), l);
        l
    }
    let mut memo = BTreeMap::new();
    for n in names {
        level(stack, n, names, &mut memo);
    }
    memo
}

/// Plans `action` over `targets` (all from `stack`) in batches of `batch` hosts.
pub fn plan(stack: &StackDef, action: &RequestAction, targets: &[Target], batch: usize) -> Vec<PlannedStage> {
    let hosts: BTreeSet<&HostId> = targets.iter().map(|t| &t.host).collect();
    let hosts: Vec<&HostId> = hosts.into_iter().collect();
    let chunk = if batch == 0 { hosts.len().max(1) } else { batch };
    let batches: Vec<&[&HostId]> = hosts.chunks(chunk).collect();
    let mut stages = Vec::new();
    for (bi, batch_hosts) in batches.iter().enumerate() {
        let in_batch: Vec<&Target> = targets.iter().filter(|t| batch_hosts.contains(&&t.host)).collect();
        let suffix = if batches.len() > 1 { format!(" (batch {}/{})", bi + 1, batches.len()) } else { String::new() };
        for (command, order, picked) in phases(stack, action, &in_batch) {
            let names: BTreeSet<String> = picked.iter().map(|t| t.component.component.clone()).collect();
            let lv: BTreeMap<String, usize> = match order {
                Order::Parallel => names.iter().map(|n| (n.clone(), 0)).collect(),
                Order::Forward | Order::Reverse => levels(stack, &names),
            };
            let max = lv.values().copied().max().unwrap_or(0);
            let order: Vec<usize> =
                if order == Order::Reverse { (0..=max).rev().collect() } else { (0..=max).collect() };
            for l in order {
                let mut tasks = Vec::new();
                let mut comps = BTreeSet::new();
                for t in picked.iter().filter(|t| lv.get(&t.component.component) == Some(&l)) {
                    let Some(spec) = command_spec(stack, &t.component.component, &command) else { continue };
                    comps.insert(t.component.component.clone());
                    tasks.push(PlannedTask {
                        host: t.host.clone(),
                        component: Some(t.component.clone()),
                        command: command.clone(),
                        spec,
                    });
                }
                if !tasks.is_empty() {
                    let comps: Vec<String> = comps.into_iter().collect();
                    stages.push(PlannedStage { name: format!("{command} {}{suffix}", comps.join(", ")), tasks });
                }
            }
        }
    }
    stages
}

/// How the components of one phase are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    /// All at once (installs, custom commands).
    Parallel,
    /// Dependencies first (start).
    Forward,
    /// Dependents first (stop).
    Reverse,
}

/// The phases of an action: (command, order, targets it applies to).
fn phases<'a>(
    stack: &StackDef,
    action: &RequestAction,
    ts: &[&'a Target],
) -> Vec<(RoleCommand, Order, Vec<&'a Target>)> {
    use ComponentState as S;
    let daemon =
        |t: &Target| stack.component(&t.component.component).is_some_and(|(_, c)| c.category == Category::Daemon);
    let pick = |f: &dyn Fn(&Target) -> bool| ts.iter().copied().filter(|t| f(t)).collect::<Vec<_>>();
    let running = |t: &Target| daemon(t) && t.state == S::Started;
    match action {
        RequestAction::Install => vec![(RoleCommand::Install, Order::Parallel, pick(&|t| not_installed(t.state)))],
        RequestAction::Start => vec![
            (RoleCommand::Install, Order::Parallel, pick(&|t| not_installed(t.state))),
            (RoleCommand::Start, Order::Forward, pick(&|t| daemon(t) && !matches!(t.state, S::Started | S::Disabled))),
        ],
        RequestAction::Stop => vec![(RoleCommand::Stop, Order::Reverse, pick(&running))],
        RequestAction::Restart => vec![
            (RoleCommand::Stop, Order::Reverse, pick(&running)),
            (RoleCommand::Start, Order::Forward, pick(&|t| daemon(t) && matches!(t.state, S::Started | S::Installed))),
        ],
        RequestAction::Uninstall => vec![
            (RoleCommand::Stop, Order::Reverse, pick(&running)),
            (
                RoleCommand::Uninstall,
                Order::Parallel,
                pick(&|t| matches!(t.state, S::Installed | S::Started) && has(stack, t, "uninstall")),
            ),
        ],
        RequestAction::Custom(name) => {
            vec![(
                RoleCommand::Custom(name.clone()),
                Order::Parallel,
                pick(&|t| has(stack, t, &format!("custom.{name}"))),
            )]
        }
        // A run has no component targets: `plan_run` plans it.
        RequestAction::Run => Vec::new(),
    }
}

fn has(stack: &StackDef, t: &Target, command: &str) -> bool {
    stack.component(&t.component.component).is_some_and(|(_, c)| c.commands.contains_key(command))
}

fn command_spec(stack: &StackDef, component: &str, command: &RoleCommand) -> Option<CommandSpec> {
    let (_, c) = stack.component(component)?;
    let key = match command {
        RoleCommand::Install => "install".to_string(),
        RoleCommand::Start => "start".to_string(),
        RoleCommand::Stop => "stop".to_string(),
        RoleCommand::Uninstall => "uninstall".to_string(),
        RoleCommand::Custom(n) => format!("custom.{n}"),
        RoleCommand::Run => return None,
    };
    c.commands.get(&key).cloned()
}

/// Plans an ad-hoc run on `hosts` in batches.
pub fn plan_run(hosts: &[HostId], spec: &CommandSpec, batch: usize) -> Vec<PlannedStage> {
    let chunk = if batch == 0 { hosts.len().max(1) } else { batch };
    let n = hosts.len().div_ceil(chunk);
    hosts
        .chunks(chunk)
        .enumerate()
        .map(|(i, hs)| PlannedStage {
            name: if n > 1 { format!("RUN (batch {}/{n})", i + 1) } else { "RUN".into() },
            tasks: hs
                .iter()
                .map(|h| PlannedTask {
                    host: h.clone(),
                    component: None,
                    command: RoleCommand::Run,
                    spec: spec.clone(),
                })
                .collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::parse_stack;

    const STACK: &str = r#"
name = "toy"
[services.toy.components.master]
category = "daemon"
install = { script = "true" }
start = { script = "true" }
stop = { script = "true" }
status = { script = "true" }
[services.toy.components.worker]
category = "daemon"
depends_on = ["master"]
install = { script = "true" }
start = { script = "true" }
stop = { script = "true" }
status = { script = "true" }
[services.toy.components.cli]
category = "client"
install = { script = "true" }
"#;

    fn t(host: &str, comp: &str, state: ComponentState) -> Target {
        Target {
            host: HostId::new(host).unwrap(),
            component: ComponentRef { service: "toy".into(), component: comp.into() },
            state,
        }
    }

    fn names(stages: &[PlannedStage]) -> Vec<String> {
        stages.iter().map(|s| format!("{} x{}", s.name, s.tasks.len())).collect()
    }

    #[test]
    fn start_installs_first_then_starts_in_dependency_order() {
        let stack = parse_stack(STACK).unwrap();
        use ComponentState::Init;
        let targets = [t("h1", "master", Init), t("h1", "worker", Init), t("h2", "worker", Init), t("h2", "cli", Init)];
        let stages = plan(&stack, &RequestAction::Start, &targets, 0);
        assert_eq!(names(&stages), ["INSTALL cli, master, worker x4", "START master x1", "START worker x2"]);
    }

    #[test]
    fn stop_runs_in_reverse_order_and_skips_what_is_not_running() {
        let stack = parse_stack(STACK).unwrap();
        use ComponentState::*;
        let targets = [t("h1", "master", Started), t("h1", "worker", Started), t("h2", "worker", Installed)];
        assert_eq!(names(&plan(&stack, &RequestAction::Stop, &targets, 0)), ["STOP worker x1", "STOP master x1"]);
        assert!(plan(&stack, &RequestAction::Start, &[t("h1", "master", Started)], 0).is_empty(), "nothing to close");
    }

    #[test]
    fn rolling_batches_run_the_whole_plan_per_batch() {
        let stack = parse_stack(STACK).unwrap();
        use ComponentState::Started;
        let targets: Vec<Target> = (1..=3).map(|i| t(&format!("h{i}"), "worker", Started)).collect();
        assert_eq!(
            names(&plan(&stack, &RequestAction::Restart, &targets, 2)),
            [
                "STOP worker (batch 1/2) x2",
                "START worker (batch 1/2) x2",
                "STOP worker (batch 2/2) x1",
                "START worker (batch 2/2) x1"
            ]
        );
    }

    #[test]
    fn ad_hoc_runs_batch_by_host() {
        let hosts: Vec<HostId> = (1..=5).map(|i| HostId::new(format!("h{i}")).unwrap()).collect();
        let spec = CommandSpec { argv: vec!["true".into()], env: Default::default(), timeout_ms: 1000 };
        let stages = plan_run(&hosts, &spec, 2);
        assert_eq!(names(&stages), ["RUN (batch 1/3) x2", "RUN (batch 2/3) x2", "RUN (batch 3/3) x1"]);
        assert_eq!(plan_run(&hosts, &spec, 0).len(), 1);
    }
}

//! Waiting on what requests do, through the CLI: a request reaching its end or some state, components reaching
//! their states; and short descriptions of both for failure messages.

use std::time::Duration;

use muster_schemas::api::{ComponentView, RequestView, TaskView};
use muster_schemas::commands::RequestId;

use crate::cli::Cli;
use crate::wait::{wait_until, Check};

/// Waits until request `id` has ended (COMPLETED, FAILED, TIMEDOUT or ABORTED) and returns it.
pub async fn wait_request_end(cli: &Cli, id: RequestId, limit: Duration) -> anyhow::Result<RequestView> {
    wait_request(cli, id, "has ended", limit, |r| r.status.is_terminal()).await
}

/// Waits until request `id` satisfies `done` (described by `what`) and returns it.
pub async fn wait_request(
    cli: &Cli,
    id: RequestId,
    what: &str,
    limit: Duration,
    done: impl Fn(&RequestView) -> bool,
) -> anyhow::Result<RequestView> {
    wait_until(limit, &format!("request {id} {what}"), async || {
        let view = cli.request(id).await?;
        Ok(if done(&view) { Check::Done(view) } else { Check::NotYet(describe_request(&view)) })
    })
    .await
}

/// Waits until `muster components` satisfies `done` (described by `what`) and returns the listing.
pub async fn wait_components(
    cli: &Cli,
    what: &str,
    limit: Duration,
    done: impl Fn(&[ComponentView]) -> bool,
) -> anyhow::Result<Vec<ComponentView>> {
    wait_until(limit, what, async || {
        let rows = cli.components().await?;
        Ok(if done(&rows) { Check::Done(rows) } else { Check::NotYet(describe_components(&rows)) })
    })
    .await
}

/// The tasks of `view` running `command` (`START`, `RUN`, ...) on `component` (`service/component`, or `None` for
/// ad-hoc runs), in id order.
pub fn tasks<'a>(view: &'a RequestView, command: &str, component: Option<&str>) -> Vec<&'a TaskView> {
    let mut out: Vec<&TaskView> =
        view.tasks.iter().filter(|t| t.command == command && t.component.as_deref() == component).collect();
    out.sort_by_key(|t| t.id);
    out
}

/// The one task of `view` for `host`, `command` and `component`.
///
/// # Panics
/// If there is not exactly one, quoting the request.
pub fn task<'a>(view: &'a RequestView, host: &str, command: &str, component: Option<&str>) -> &'a TaskView {
    let found: Vec<&TaskView> = tasks(view, command, component).into_iter().filter(|t| t.host == host).collect();
    match found.as_slice() {
        [one] => one,
        _ => panic!(
            "expected one {command} {component:?} task on {host}, found {}: {}",
            found.len(),
            describe_request(view)
        ),
    }
}

/// The row of `host`'s `component`.
pub fn component<'a>(rows: &'a [ComponentView], host: &str, component: &str) -> Option<&'a ComponentView> {
    rows.iter().find(|r| r.host == host && r.component == component)
}

/// What is wrong with `v` as the record of one whole decision that asked `expected` hosts: every task its stages
/// name exists (a request written without part of its tasks counts fewer than it names), it has `expected` of
/// them, no host has two tasks in one stage (among the tasks the view lists), and a COMPLETED request has every
/// stage COMPLETED with every task ended. Empty when all holds.
pub fn half_applied(v: &RequestView, expected: u64) -> Vec<String> {
    let mut wrong = Vec::new();
    let named: u64 = v.stages.iter().map(|s| s.total).sum();
    let present: u64 = v.counts.values().sum();
    if named != v.tasks_total || present != v.tasks_total {
        wrong.push(format!("its stages name {named} tasks, {} in all, of which {present} exist", v.tasks_total));
    }
    if v.tasks_total != expected {
        wrong.push(format!("{} tasks for {expected} hosts", v.tasks_total));
    }
    let mut seen = std::collections::BTreeSet::new();
    for t in v.tasks.iter().filter(|t| !seen.insert((t.stage, t.host.as_str()))) {
        wrong.push(format!("host {} has two tasks in stage {}", t.host, t.stage));
    }
    if v.status == muster_schemas::cluster::TaskStatus::Completed {
        for s in v.stages.iter().filter(|s| s.status != v.status || s.done != s.total) {
            wrong.push(format!("COMPLETED with stage {:?} {} ({}/{} ended)", s.name, s.status, s.done, s.total));
        }
    }
    wrong
}

/// `request 3 IN_PROGRESS [INSTALL master=COMPLETED, START master=IN_PROGRESS] tasks: 7 h1 START svc/master
/// IN_PROGRESS a1 exit -; ...`
pub fn describe_request(v: &RequestView) -> String {
    let stages: Vec<String> = v.stages.iter().map(|s| format!("{}={}", s.name, s.status)).collect();
    let tasks: Vec<String> = v
        .tasks
        .iter()
        .map(|t| {
            let exit = t.exit_code.map_or("-".to_string(), |c| c.to_string());
            let comp = t.component.as_deref().unwrap_or("-");
            format!("{} {} {} {comp} {} a{} exit {exit} {:?}", t.id, t.host, t.command, t.status, t.attempt, t.detail)
        })
        .collect();
    format!("request {} {} {:?} [{}] tasks: {}", v.id, v.status, v.detail, stages.join(", "), tasks.join("; "))
}

/// `h1/svc/master=STARTED(want STARTED, restarts 0) ...`
pub fn describe_components(rows: &[ComponentView]) -> String {
    if rows.is_empty() {
        return "no components".to_string();
    }
    rows.iter()
        .map(|r| {
            format!(
                "{}/{}/{}={}(want {:?}, restarts {})",
                r.host, r.service, r.component, r.state, r.desired, r.auto_restarts
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

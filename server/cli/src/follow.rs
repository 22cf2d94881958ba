//! [`Follow`]: following one request to its end from its change feed, pure. The shell subscribes to
//! `<prefix>.events.request.*` and `<prefix>.events.task.*` BEFORE it submits the request (or reads it, for
//! `request --watch`), so no event can slip by between the two, then steps every event and every read through
//! [`Follow`] and does what the returned [`Next`] says. The end is known the moment the leader publishes it; a
//! read only fills gaps (the first state, the final view with every task's output, a lost event).
//!
//! | input | when | `Next` |
//! |---|---|---|
//! | request event, other request or not terminal | any | `Wait` |
//! | request event, terminal | any | `Read` (the final view: stages, tasks, output) |
//! | read, request terminal | any | `Done` |
//! | read, not terminal | the feed announced the end | `ReadAgain` (this instance has not applied the end yet) |
//! | read, not terminal | otherwise | `Wait` |
//!
//! Task events only move the progress ([`Follow::progress`]): per task, a later attempt or a later phase wins, so
//! an event older than a read (or a read older than an event) never moves a task back.

use std::collections::HashMap;

use muster_schemas::api::RequestView;
use muster_schemas::cluster::TaskStatus;
use muster_schemas::commands::{RequestId, TaskId};
use muster_schemas::events::{RequestChanged, TaskChanged};

/// What the shell does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Wait for the next event (or the slow safety re-read that covers a lost one).
    Wait,
    /// Read the request now.
    Read,
    /// Read again after a short pause: the feed said the request ended, but the instance that answered the read
    /// has not applied that yet (a follower a few milliseconds behind the leader).
    ReadAgain,
    /// The request ended and [`Follow::view`] is its final state.
    Done,
}

/// One stage's progress, merged from the last read and the task events heard since.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageProgress {
    /// Stage name, e.g. `START master (batch 1/2)`.
    pub name: String,
    /// Stage status as last read.
    pub status: TaskStatus,
    /// Tasks in the stage.
    pub total: u64,
    /// Tasks that ended.
    pub done: u64,
    /// Tasks that ended other than COMPLETED.
    pub failed: u64,
    /// Tasks IN_PROGRESS: the agent reported them started and they have not ended.
    pub running: u64,
}

/// The state of following one request.
#[derive(Debug, Clone)]
pub struct Follow {
    request: RequestId,
    /// The last read.
    view: Option<RequestView>,
    /// The end as the feed announced it, until a read shows it.
    announced_end: bool,
    /// Every task heard of (in a read's list or an event): its stage when known, attempt and status.
    tasks: HashMap<TaskId, Heard>,
}

#[derive(Debug, Clone, Copy)]
struct Heard {
    stage: Option<usize>,
    attempt: u32,
    status: TaskStatus,
}

/// Orders a task's statuses within one attempt: a status never goes back to an earlier phase.
fn phase(s: TaskStatus) -> u8 {
    match s {
        TaskStatus::Pending | TaskStatus::Queued => 0,
        TaskStatus::InProgress => 1,
        _ => 2,
    }
}

impl Follow {
    /// Following `request`, nothing heard yet: the shell reads first ([`Next::Read`]).
    pub fn new(request: RequestId) -> Self {
        Self { request, view: None, announced_end: false, tasks: HashMap::new() }
    }

    /// The request followed.
    pub fn request(&self) -> RequestId {
        self.request
    }

    /// The last read, if any.
    pub fn view(&self) -> Option<&RequestView> {
        self.view.as_ref()
    }

    /// The last read, taken.
    pub fn into_view(self) -> Option<RequestView> {
        self.view
    }

    /// A request changed status.
    pub fn on_request_event(&mut self, ev: &RequestChanged) -> Next {
        if ev.request != self.request || !ev.status.is_terminal() {
            return Next::Wait;
        }
        self.announced_end = true;
        Next::Read
    }

    /// A task changed status; returns whether it was one of this request's (the progress may have moved).
    pub fn on_task_event(&mut self, ev: &TaskChanged) -> bool {
        if ev.request != self.request {
            return false;
        }
        // A task the read did not list (a request over the view's task limit) runs in the stage running now:
        // stages run one after the other.
        let current = self.current_stage();
        self.hear(ev.task, current, ev.attempt, ev.status, false);
        true
    }

    /// A read of the request answered.
    pub fn on_read(&mut self, view: RequestView) -> Next {
        for (i, s) in view.stages.iter().enumerate() {
            for t in &s.tasks {
                self.tasks
                    .entry(*t)
                    .or_insert(Heard { stage: Some(i), attempt: 0, status: TaskStatus::Pending })
                    .stage = Some(i);
            }
        }
        for t in &view.tasks {
            self.hear(t.id, Some(t.stage as usize), t.attempt, t.status, true);
        }
        let ended = view.status.is_terminal();
        self.view = Some(view);
        if ended {
            Next::Done
        } else if self.announced_end {
            Next::ReadAgain
        } else {
            Next::Wait
        }
    }

    fn hear(&mut self, task: TaskId, stage: Option<usize>, attempt: u32, status: TaskStatus, stage_is_known: bool) {
        let e = self.tasks.entry(task).or_insert(Heard { stage, attempt, status });
        if stage_is_known || e.stage.is_none() {
            e.stage = stage.or(e.stage);
        }
        if (attempt, phase(status)) >= (e.attempt, phase(e.status)) {
            e.attempt = attempt;
            e.status = status;
        }
    }

    /// The first stage that has not ended, as last read.
    fn current_stage(&self) -> Option<usize> {
        let v = self.view.as_ref()?;
        v.stages.iter().position(|s| !s.status.is_terminal()).or(v.stages.len().checked_sub(1))
    }

    /// Each stage's progress: the read's counts, raised by what the task events told since (counts of ended tasks
    /// only grow, so the larger of the two is the newer).
    pub fn progress(&self) -> Vec<StageProgress> {
        let Some(v) = &self.view else { return Vec::new() };
        let mut heard = vec![(0u64, 0u64, 0u64, false); v.stages.len()];
        for h in self.tasks.values() {
            let Some(c) = h.stage.and_then(|s| heard.get_mut(s)) else { continue };
            c.0 += u64::from(h.status.is_terminal());
            c.1 += u64::from(h.status.is_terminal() && h.status != TaskStatus::Completed);
            c.2 += u64::from(h.status == TaskStatus::InProgress);
            c.3 = true;
        }
        v.stages
            .iter()
            .zip(heard)
            .map(|(s, (done, failed, running, any))| StageProgress {
                name: s.name.clone(),
                status: s.status,
                total: s.total,
                done: s.done.max(done).min(s.total),
                failed: s.failed.max(failed),
                running: if any { running } else { s.running },
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use muster_schemas::api::{StageView, TaskView};
    use muster_schemas::HostId;

    use super::*;

    fn task(id: TaskId, stage: u32, status: TaskStatus) -> TaskView {
        TaskView {
            id,
            stage,
            host: format!("h{id}"),
            component: None,
            command: "RUN".into(),
            status,
            attempt: 1,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            started_at: 0,
            finished_at: 0,
            detail: String::new(),
        }
    }

    fn view(status: TaskStatus, tasks: Vec<TaskView>, listed: bool) -> RequestView {
        let stage_status = if status.is_terminal() { status } else { TaskStatus::InProgress };
        let done = tasks.iter().filter(|t| t.status.is_terminal()).count() as u64;
        RequestView {
            id: 7,
            description: "RUN true on all hosts".into(),
            status,
            created_at: 1,
            finished_at: 0,
            detail: String::new(),
            stages: vec![StageView {
                name: "RUN".into(),
                status: stage_status,
                tasks: if listed { tasks.iter().map(|t| t.id).collect() } else { Vec::new() },
                total: 3,
                done,
                failed: 0,
                running: 0,
            }],
            tasks: if listed { tasks } else { Vec::new() },
            tasks_total: 3,
            counts: Default::default(),
        }
    }

    fn request_event(request: RequestId, status: TaskStatus) -> RequestChanged {
        RequestChanged { request, status, stage: 0, at: 5, detail: String::new() }
    }

    fn task_event(task: TaskId, request: RequestId, status: TaskStatus) -> TaskChanged {
        TaskChanged {
            task,
            request,
            host: HostId::new("h1").unwrap(),
            what: "RUN true".into(),
            status,
            attempt: 1,
            at: 5,
        }
    }

    fn queued() -> Vec<TaskView> {
        (1..=3).map(|i| task(i, 0, TaskStatus::Queued)).collect()
    }

    #[test]
    fn the_end_heard_on_the_feed_asks_for_the_final_read() {
        let mut f = Follow::new(7);
        assert_eq!(f.on_read(view(TaskStatus::InProgress, queued(), true)), Next::Wait);
        assert_eq!(f.on_request_event(&request_event(8, TaskStatus::Completed)), Next::Wait, "another request");
        assert_eq!(f.on_request_event(&request_event(7, TaskStatus::InProgress)), Next::Wait, "not an end");
        assert_eq!(f.on_request_event(&request_event(7, TaskStatus::Completed)), Next::Read);
        let done: Vec<TaskView> = (1..=3).map(|i| task(i, 0, TaskStatus::Completed)).collect();
        assert_eq!(f.on_read(view(TaskStatus::Completed, done, true)), Next::Done);
        assert_eq!(f.view().unwrap().status, TaskStatus::Completed);
    }

    #[test]
    fn a_lagging_read_after_the_end_is_read_again() {
        let mut f = Follow::new(7);
        assert_eq!(f.on_request_event(&request_event(7, TaskStatus::Failed)), Next::Read);
        assert_eq!(f.on_read(view(TaskStatus::InProgress, queued(), true)), Next::ReadAgain);
        assert_eq!(f.on_read(view(TaskStatus::Failed, queued(), true)), Next::Done);
    }

    #[test]
    fn an_end_found_by_a_read_alone_is_done() {
        // The event was lost (or the request ended before the subscription): the safety re-read finds the end.
        let mut f = Follow::new(7);
        assert_eq!(f.on_read(view(TaskStatus::Aborted, queued(), true)), Next::Done);
    }

    #[test]
    fn task_events_move_the_progress_and_never_back() {
        let mut f = Follow::new(7);
        assert!(f.progress().is_empty(), "no read, no stages");
        f.on_read(view(TaskStatus::InProgress, queued(), true));
        assert!(!f.on_task_event(&task_event(1, 8, TaskStatus::Completed)), "another request's task");
        assert!(f.on_task_event(&task_event(1, 7, TaskStatus::InProgress)));
        assert!(f.on_task_event(&task_event(2, 7, TaskStatus::Completed)));
        assert!(f.on_task_event(&task_event(3, 7, TaskStatus::Failed)));
        let p = &f.progress()[0];
        assert_eq!((p.total, p.done, p.failed, p.running), (3, 2, 1, 1));
        // A read older than the events does not undo them.
        f.on_read(view(TaskStatus::InProgress, queued(), true));
        let p = &f.progress()[0];
        assert_eq!((p.done, p.failed, p.running), (2, 1, 1));
        // An older event for a task already ended does not reopen it; a new attempt does.
        f.on_task_event(&task_event(2, 7, TaskStatus::InProgress));
        assert_eq!(f.progress()[0].done, 2);
        f.on_task_event(&TaskChanged { attempt: 2, ..task_event(3, 7, TaskStatus::Queued) });
        let p = &f.progress()[0];
        assert_eq!((p.done, p.failed), (1, 0), "task 3 is being retried");
    }

    #[test]
    fn tasks_of_a_large_request_count_in_the_running_stage() {
        // Over the view's task limit, stages list no task ids: events count in the stage that runs.
        let mut f = Follow::new(7);
        f.on_read(view(TaskStatus::InProgress, queued(), false));
        for t in 1..=3 {
            f.on_task_event(&task_event(t, 7, TaskStatus::Completed));
        }
        let p = &f.progress()[0];
        assert_eq!((p.done, p.total), (3, 3));
    }
}

//! The action queue (Ambari's ActionQueue) as a pure structure: no I/O, no clock, no processes.
//!
//! Jobs wait in one FIFO per component lane; a lane runs one job at a time, so the commands of one component
//! happen in the order they were sent. Ad-hoc runs (no component) each have a lane of their own, so they never
//! block each other. At most `max_parallel` jobs run at once over all lanes; when a slot frees, the oldest job
//! whose lane is idle goes next. The shell ([`crate::runner`]) asks [`ActionQueue::start_ready`] which jobs to
//! start, runs them, and reports back with [`ActionQueue::finish`].

use std::collections::{BTreeMap, HashMap};

use muster_schemas::commands::ComponentRef;
use muster_schemas::ids::TaskAttempt;

/// A job's id in the queue: increasing in arrival order, so it doubles as the FIFO position.
pub type JobId = u64;

/// A queued job and what the shell needs to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job<T> {
    /// Its place in arrival order; the shell hands it back to [`ActionQueue::finish`].
    pub id: JobId,
    /// The component lane, `None` for ad-hoc runs.
    pub lane: Option<ComponentRef>,
    /// The task attempt it runs, `None` for the agent's own jobs (auto-restarts).
    pub task: Option<TaskAttempt>,
    /// What the shell runs for this job (the queue never looks at it).
    pub payload: T,
}

/// What [`ActionQueue::cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancelled<T> {
    /// The job was waiting and has been removed: it never ran.
    Dequeued(Job<T>),
    /// The job is running: the shell must kill it; it stays running until [`ActionQueue::finish`].
    Running(JobId),
    /// No such task is queued or running (already finished, or never delivered).
    NotFound,
}

/// A call the queue's state does not allow; the shell logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// [`ActionQueue::push`] of a task attempt that is already queued or running.
    #[error("task {0} is already queued or running")]
    Duplicate(TaskAttempt),
    /// [`ActionQueue::finish`] of a job that is not running.
    #[error("job {0} finished but was not running")]
    NotRunning(JobId),
}

/// What the queue remembers of a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Running {
    lane: Option<ComponentRef>,
    task: Option<TaskAttempt>,
}

/// Per-component FIFO lanes under a global concurrency limit.
#[derive(Debug, Clone)]
pub struct ActionQueue<T> {
    max_parallel: usize,
    next_id: JobId,
    /// Waiting jobs by id, i.e. in arrival order.
    pending: BTreeMap<JobId, Job<T>>,
    running: BTreeMap<JobId, Running>,
    /// Queued plus running jobs per component lane, so "is anything of this component in flight" is O(1).
    lane_load: HashMap<ComponentRef, usize>,
    /// Task attempts queued or running, and their job.
    tasks: HashMap<TaskAttempt, JobId>,
}

impl<T> ActionQueue<T> {
    /// An empty queue running at most `max_parallel` jobs at once (at least one).
    pub fn new(max_parallel: usize) -> Self {
        Self {
            max_parallel: max_parallel.max(1),
            next_id: 1,
            pending: BTreeMap::new(),
            running: BTreeMap::new(),
            lane_load: HashMap::new(),
            tasks: HashMap::new(),
        }
    }

    /// Queues a job at the end of its lane.
    pub fn push(
        &mut self,
        lane: Option<ComponentRef>,
        task: Option<TaskAttempt>,
        payload: T,
    ) -> Result<JobId, QueueError> {
        if let Some(key) = task {
            if self.tasks.contains_key(&key) {
                return Err(QueueError::Duplicate(key));
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        if let Some(key) = task {
            self.tasks.insert(key, id);
        }
        if let Some(lane) = &lane {
            *self.lane_load.entry(lane.clone()).or_default() += 1;
        }
        self.pending.insert(id, Job { id, lane, task, payload });
        Ok(id)
    }

    /// Moves every job that may start now into the running set and returns them, oldest first: while a slot is
    /// free, the oldest waiting job whose lane has nothing running.
    pub fn start_ready(&mut self) -> Vec<Job<T>> {
        let mut ready = Vec::new();
        while self.running.len() < self.max_parallel {
            let next = self.pending.values().find(|job| match &job.lane {
                None => true,
                Some(lane) => !self.running.values().any(|r| r.lane.as_ref() == Some(lane)),
            });
            let Some(id) = next.map(|job| job.id) else { break };
            let Some(job) = self.pending.remove(&id) else { break };
            self.running.insert(id, Running { lane: job.lane.clone(), task: job.task });
            ready.push(job);
        }
        ready
    }

    /// Marks a running job finished, freeing its slot and its lane.
    pub fn finish(&mut self, id: JobId) -> Result<(), QueueError> {
        let running = self.running.remove(&id).ok_or(QueueError::NotRunning(id))?;
        self.forget(running.lane.as_ref(), running.task);
        Ok(())
    }

    /// Cancels a task attempt: removes it if it waits, or names the running job the shell must kill.
    pub fn cancel(&mut self, key: TaskAttempt) -> Cancelled<T> {
        let Some(&id) = self.tasks.get(&key) else { return Cancelled::NotFound };
        if self.running.contains_key(&id) {
            return Cancelled::Running(id);
        }
        match self.pending.remove(&id) {
            Some(job) => {
                self.forget(job.lane.as_ref(), job.task);
                Cancelled::Dequeued(job)
            }
            None => Cancelled::NotFound,
        }
    }

    /// Removes every waiting job (shutdown: nothing new starts), oldest first.
    pub fn drain_pending(&mut self) -> Vec<Job<T>> {
        let jobs: Vec<Job<T>> = std::mem::take(&mut self.pending).into_values().collect();
        for job in &jobs {
            self.forget(job.lane.as_ref(), job.task);
        }
        jobs
    }

    /// Whether a job of `component` is running.
    pub fn is_running(&self, component: &ComponentRef) -> bool {
        self.running.values().any(|r| r.lane.as_ref() == Some(component))
    }

    /// Whether a job of `component` is queued or running.
    pub fn is_busy(&self, component: &ComponentRef) -> bool {
        self.lane_load.get(component).is_some_and(|n| *n > 0)
    }

    /// Whether `key` is queued or running.
    pub fn contains(&self, key: TaskAttempt) -> bool {
        self.tasks.contains_key(&key)
    }

    /// Jobs running now.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// Jobs waiting for a free slot or for their lane's running job to finish.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    fn forget(&mut self, lane: Option<&ComponentRef>, task: Option<TaskAttempt>) {
        if let Some(key) = task {
            self.tasks.remove(&key);
        }
        if let Some(lane) = lane {
            if let Some(load) = self.lane_load.get_mut(lane) {
                *load -= 1;
                if *load == 0 {
                    self.lane_load.remove(lane);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use muster_schemas::commands::TaskId;

    fn comp(name: &str) -> Option<ComponentRef> {
        Some(ComponentRef { service: "svc".into(), component: name.into() })
    }

    fn key(task: TaskId) -> Option<TaskAttempt> {
        Some(TaskAttempt { task, attempt: 1 })
    }

    fn started(q: &mut ActionQueue<&'static str>) -> Vec<&'static str> {
        q.start_ready().into_iter().map(|j| j.payload).collect()
    }

    #[test]
    fn one_job_per_component_in_fifo_order() {
        let mut q = ActionQueue::new(8);
        let a1 = q.push(comp("a"), key(1), "a1").unwrap();
        q.push(comp("b"), key(2), "b1").unwrap();
        q.push(comp("a"), key(3), "a2").unwrap();
        q.push(comp("a"), key(4), "a3").unwrap();
        assert_eq!(started(&mut q), ["a1", "b1"]);
        assert!(q.is_running(&comp("a").unwrap()));
        assert_eq!(started(&mut q), Vec::<&str>::new(), "a2 must wait for a1");
        q.finish(a1).unwrap();
        let next = q.start_ready();
        assert_eq!(next.iter().map(|j| j.payload).collect::<Vec<_>>(), ["a2"]);
        q.finish(next[0].id).unwrap();
        assert_eq!(started(&mut q), ["a3"]);
    }

    #[test]
    fn ad_hoc_runs_do_not_block_each_other() {
        let mut q = ActionQueue::new(8);
        for (i, name) in ["x", "y", "z"].into_iter().enumerate() {
            q.push(None, key(i as u64), name).unwrap();
        }
        assert_eq!(started(&mut q), ["x", "y", "z"]);
        assert_eq!(q.running_len(), 3);
    }

    #[test]
    fn global_limit_starts_the_oldest_runnable_job_first() {
        let mut q = ActionQueue::new(2);
        let a1 = q.push(comp("a"), key(1), "a1").unwrap();
        q.push(comp("a"), key(2), "a2").unwrap();
        q.push(None, key(3), "adhoc").unwrap();
        q.push(comp("b"), key(4), "b1").unwrap();
        assert_eq!(started(&mut q), ["a1", "adhoc"]);
        assert_eq!(q.pending_len(), 2);
        // a1 frees a slot; a2 (older than b1) may go since lane a is now idle.
        q.finish(a1).unwrap();
        assert_eq!(started(&mut q), ["a2"]);
        assert_eq!(started(&mut q), Vec::<&str>::new(), "limit of 2 reached");
    }

    #[test]
    fn a_busy_lane_does_not_hold_up_younger_jobs_of_other_lanes() {
        let mut q = ActionQueue::new(2);
        q.push(comp("a"), key(1), "a1").unwrap();
        q.push(comp("a"), key(2), "a2").unwrap();
        q.push(comp("b"), key(3), "b1").unwrap();
        assert_eq!(started(&mut q), ["a1", "b1"]);
    }

    #[test]
    fn cancel_removes_a_queued_job_and_names_a_running_one() {
        let mut q = ActionQueue::new(1);
        let a1 = q.push(comp("a"), key(1), "a1").unwrap();
        q.push(comp("a"), key(2), "a2").unwrap();
        assert_eq!(started(&mut q), ["a1"]);
        match q.cancel(key(2).unwrap()) {
            Cancelled::Dequeued(job) => assert_eq!(job.payload, "a2"),
            other => panic!("expected Dequeued, got {other:?}"),
        }
        assert!(!q.contains(key(2).unwrap()));
        assert_eq!(q.cancel(key(1).unwrap()), Cancelled::Running(a1));
        assert!(q.contains(key(1).unwrap()), "a running job stays until it finishes");
        assert_eq!(q.cancel(key(9).unwrap()), Cancelled::NotFound);
        q.finish(a1).unwrap();
        assert_eq!(q.cancel(key(1).unwrap()), Cancelled::NotFound);
        assert!(!q.is_busy(&comp("a").unwrap()));
        assert_eq!(started(&mut q), Vec::<&str>::new());
    }

    #[test]
    fn busy_counts_queued_and_running_jobs() {
        let mut q = ActionQueue::new(1);
        let a = comp("a").unwrap();
        q.push(None, key(1), "adhoc").unwrap();
        let a1 = q.push(comp("a"), None, "restart").unwrap();
        assert!(q.is_busy(&a) && !q.is_running(&a));
        assert_eq!(started(&mut q), ["adhoc"]);
        q.finish(1).unwrap();
        assert_eq!(started(&mut q), ["restart"]);
        assert!(q.is_running(&a));
        q.finish(a1).unwrap();
        assert!(!q.is_busy(&a) && !q.is_running(&a));
    }

    #[test]
    fn illegal_calls_are_named_errors() {
        let mut q = ActionQueue::new(1);
        q.push(None, key(1), "x").unwrap();
        assert_eq!(q.push(None, key(1), "again"), Err(QueueError::Duplicate(key(1).unwrap())));
        assert_eq!(q.finish(1), Err(QueueError::NotRunning(1)), "queued, not running");
        assert_eq!(q.finish(42), Err(QueueError::NotRunning(42)));
        // Jobs without a task key never collide.
        q.push(None, None, "own").unwrap();
        q.push(None, None, "own").unwrap();
    }

    #[test]
    fn drain_pending_empties_the_queue_but_not_the_running_set() {
        let mut q = ActionQueue::new(1);
        q.push(comp("a"), key(1), "a1").unwrap();
        q.push(comp("a"), key(2), "a2").unwrap();
        q.push(None, key(3), "adhoc").unwrap();
        assert_eq!(started(&mut q), ["a1"]);
        let drained: Vec<_> = q.drain_pending().into_iter().map(|j| j.payload).collect();
        assert_eq!(drained, ["a2", "adhoc"]);
        assert_eq!(q.running_len(), 1);
        assert!(q.is_busy(&comp("a").unwrap()), "a1 still runs");
        assert!(!q.contains(key(2).unwrap()));
    }

    #[test]
    fn zero_parallel_means_one() {
        let mut q = ActionQueue::new(0);
        q.push(None, key(1), "x").unwrap();
        assert_eq!(started(&mut q), ["x"]);
    }
}

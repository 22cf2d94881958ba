//! Following a request to its end: the async shell around [`Follow`]. It reads the request once, then waits on the
//! change feed (subscribed by the caller before it submitted or read anything) and reads again only when the feed
//! says the request ended, or when nothing was heard for [`SAFETY_REREAD`]. While a person watches, a progress bar
//! per stage moves with every task event.

use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use muster_schemas::api::{Endpoint, RequestView};
use muster_schemas::commands::RequestId;

use crate::client::{Api, Feed, FeedEvent};
use crate::error::CliError;
use crate::follow::{Follow, Next, StageProgress};

/// A read while nothing is heard, only for an end whose event was lost (a reconnect, a slow-consumer drop, a
/// leader that died between commit and publish): never in the path of a request whose end is heard, so it can be
/// slow enough to cost a large request's server nothing (reading a 100,000-task request takes a noticeable part of
/// a core).
pub const SAFETY_REREAD: Duration = Duration::from_secs(5);
/// First pause before reading again when the feed announced the end but the answering instance had not applied
/// it yet; a follower trails the leader by milliseconds, so this doubles from a few milliseconds.
const READ_AGAIN_FIRST: Duration = Duration::from_millis(5);
/// Longest pause between such reads (an instance that far behind answers the min-seq wait with an error anyway).
const READ_AGAIN_MAX: Duration = Duration::from_millis(500);

/// Follows request `id` to its end and returns its final view. `min_seq`: the sequence the caller's write
/// committed at, so every read sees at least the request it created. `progress`: draw bars on stderr.
pub async fn follow(
    api: &Api,
    mut feed: Feed,
    id: RequestId,
    min_seq: Option<u64>,
    progress: bool,
) -> Result<RequestView, CliError> {
    let mut f = Follow::new(id);
    let mut bars = progress.then(Bars::new);
    let mut next = Next::Read;
    let mut read_again = READ_AGAIN_FIRST;
    let body = id.to_string();
    let safety = tokio::time::sleep(SAFETY_REREAD);
    tokio::pin!(safety);
    loop {
        match next {
            Next::Done => break,
            Next::Read | Next::ReadAgain => {
                if next == Next::ReadAgain {
                    tokio::time::sleep(read_again).await;
                    read_again = (read_again * 2).min(READ_AGAIN_MAX);
                }
                let view: RequestView = api.read(Endpoint::Request, &body, min_seq).await?;
                next = f.on_read(view);
                safety.as_mut().reset(tokio::time::Instant::now() + SAFETY_REREAD);
            }
            Next::Wait => {
                tokio::select! {
                    ev = feed.next() => match ev {
                        Some(FeedEvent::Request(e)) => next = f.on_request_event(&e),
                        Some(FeedEvent::Task(e)) => {
                            if !f.on_task_event(&e) {
                                continue;
                            }
                        }
                        None => return Err(CliError::Nats("the connection closed while following the request".into())),
                    },
                    _ = &mut safety => next = Next::Read,
                }
            }
        }
        if let Some(b) = &mut bars {
            b.show(&f.progress());
        }
    }
    if let Some(b) = bars {
        b.finish();
    }
    f.into_view().ok_or_else(|| CliError::Nats("the request ended before it could be read".into()))
}

/// One progress bar per stage, on stderr.
struct Bars {
    multi: MultiProgress,
    style: ProgressStyle,
    stages: Vec<ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template("{prefix:<40!} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        Self { multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()), style, stages: Vec::new() }
    }

    fn show(&mut self, progress: &[StageProgress]) {
        for (i, s) in progress.iter().enumerate() {
            if i == self.stages.len() {
                let b = self.multi.add(ProgressBar::new(s.total));
                b.set_style(self.style.clone());
                b.set_prefix(s.name.clone());
                self.stages.push(b);
            }
            let b = &self.stages[i];
            let running = if s.running > 0 { format!(", {} running", s.running) } else { String::new() };
            let failed = if s.failed > 0 { format!(", {} failed", s.failed) } else { String::new() };
            b.set_message(format!("{}{running}{failed}", s.status));
            b.set_length(s.total);
            b.set_position(s.done);
            if s.status.is_terminal() && !b.is_finished() {
                b.finish();
            }
        }
    }

    fn finish(self) {
        for b in &self.stages {
            b.finish();
        }
    }
}

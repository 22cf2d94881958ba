//! Deadlines for everything a test waits on: a wait that fails says what did not happen and what
//! was seen last, instead of hanging the suite.

use std::fmt;
use std::future::IntoFuture;
use std::time::{Duration, Instant};

/// How often [`wait_until`] looks again. Short enough that a state seen by the test lags the real one by little;
/// long enough that polling through the CLI (one process per look) does not load the machine.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// One look at the system, for [`wait_until`].
#[derive(Debug)]
pub enum Check<T> {
    /// The condition holds; the wait returns this value.
    Done(T),
    /// Not yet; the string says what was seen, for the failure message.
    NotYet(String),
}

/// An error that must end a wait at once instead of being retried, e.g. a process the test needs has exited.
#[derive(Debug)]
pub struct Fatal(pub String);

impl fmt::Display for Fatal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// An error that stops [`wait_until`] immediately.
pub fn fatal(message: impl Into<String>) -> anyhow::Error {
    Fatal(message.into()).into()
}

/// Awaits `fut` for at most `limit`; the error names `what` was being waited for.
pub async fn within<T>(limit: Duration, what: &str, fut: impl IntoFuture<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(limit, fut.into_future())
        .await
        .map_err(|_| anyhow::anyhow!("timed out after {limit:?} waiting for {what}"))
}

/// Looks at the system every `POLL_INTERVAL` until `check` returns [`Check::Done`] or `limit` has passed.
///
/// An `Err` from `check` counts as "not yet" (a CLI call fails while a server restarts, for example) and is
/// reported if the wait times out, unless it wraps [`Fatal`] (see [`fatal`]), which ends the wait at once.
/// Each look is itself bounded by the remaining time, so a hung look cannot hang the test.
pub async fn wait_until<T>(
    limit: Duration,
    what: &str,
    mut check: impl AsyncFnMut() -> anyhow::Result<Check<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let mut last: String;
    let mut looks = 0u32;
    loop {
        let remaining = limit.saturating_sub(start.elapsed()).max(POLL_INTERVAL);
        looks += 1;
        match tokio::time::timeout(remaining, check()).await {
            Ok(Ok(Check::Done(value))) => return Ok(value),
            Ok(Ok(Check::NotYet(seen))) => last = seen,
            Ok(Err(e)) if e.is::<Fatal>() => {
                return Err(e.context(format!("gave up waiting until {what} after {:?}", start.elapsed())))
            }
            Ok(Err(e)) => last = format!("error: {e:#}"),
            Err(_) => last = format!("a look at the system hung for {remaining:?}"),
        }
        if start.elapsed() >= limit {
            anyhow::bail!("timed out after {limit:?} ({looks} looks) waiting until {what}; last seen: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

//! Polling until something a user would wait for has happened.

use std::future::Future;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

/// Calls `probe` every `every` until it yields `Some`, or fails after
/// `within` with `what` and the last observation in the message.
pub async fn until<T, F, Fut>(
    what: &str,
    within: Duration,
    every: Duration,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Probe<T>>>,
{
    let deadline = Instant::now() + within;
    loop {
        let last = match probe().await {
            Ok(Probe::Done(v)) => return Ok(v),
            Ok(Probe::NotYet(seen)) => seen,
            Err(e) => format!("error: {e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("{what}: not within {within:?}; last seen: {last}");
        }
        tokio::time::sleep(every).await;
    }
}

/// One observation of a condition being waited for.
#[derive(Debug)]
pub enum Probe<T> {
    /// The condition holds; here is its value.
    Done(T),
    /// Not yet; what was seen instead, for the failure message.
    NotYet(String),
}

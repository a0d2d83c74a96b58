//! The durable execution queue and its worker pool.
//!
//! An execution is a row: `queued` → `running` (claimed with a lease) →
//! `succeeded` | `failed`. Workers claim the oldest claimable row in one
//! statement (PostgreSQL: `FOR UPDATE SKIP LOCKED`, so replicas never take
//! the same row; SQLite: the single writer serialises claims) and renew the
//! lease with a heartbeat every third of its length. A row whose lease runs
//! out — its worker or process died — is claimable again, until it has used
//! `max_attempts` claims; then it is failed. Nothing lives only in memory: a
//! restart loses no work.

use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::db::{Dialect, Tx};
use crate::error::Result;
use crate::ids::{new_id, now_ms};
use crate::kinds::{self, AgentSpec, Failure};
use crate::state::AppState;

/// How long a running execution may take to finish after shutdown starts
/// before it is handed back to the queue.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Queues an execution inside a transaction; returns its id.
pub async fn enqueue(
    tx: &mut Tx,
    product: &str,
    agent_id: &str,
    trigger_id: Option<&str>,
    input: &Value,
    max_attempts: u32,
) -> Result<String> {
    let id = new_id("exe");
    let now = now_ms();
    sqlx::query(
        "INSERT INTO executions (id, product, agent_id, trigger_id, status, input, attempts, \
         max_attempts, created_at, updated_at) VALUES ($1, $2, $3, $4, 'queued', $5, 0, $6, $7, $7)",
    )
    .bind(&id)
    .bind(product)
    .bind(agent_id)
    .bind(trigger_id.map(str::to_owned))
    .bind(input.to_string())
    .bind(i64::from(max_attempts))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// A claimed execution.
#[derive(Debug, sqlx::FromRow)]
pub struct Claimed {
    /// Execution id.
    pub id: String,
    /// Product.
    pub product: String,
    /// Agent.
    pub agent_id: String,
    /// Input JSON.
    pub input: String,
    /// Claims so far, this one included.
    pub attempts: i64,
}

/// Claims the oldest claimable execution for `worker`.
pub async fn claim(state: &AppState, worker: &str) -> Result<Option<Claimed>> {
    let now = now_ms();
    let lease_until = now + state.config.queue.lease.as_millis() as i64;
    let lock = match state.db.dialect {
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE executions SET status = 'running', lease_owner = $1, lease_until = $2, \
         attempts = attempts + 1, started_at = $3, updated_at = $3 \
         WHERE id = (SELECT id FROM executions \
                     WHERE (status = 'queued' OR (status = 'running' AND lease_until < $3)) \
                       AND attempts < max_attempts \
                     ORDER BY created_at, id LIMIT 1 {lock}) \
         RETURNING id, product, agent_id, input, attempts"
    );
    Ok(sqlx::query_as::<_, Claimed>(&sql)
        .bind(worker)
        .bind(lease_until)
        .bind(now)
        .fetch_optional(&state.db.pool)
        .await?)
}

/// Fails running executions whose lease ran out on their last attempt.
pub async fn fail_exhausted(state: &AppState) -> Result<u64> {
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE executions SET status = 'failed', \
         error = 'interrupted: its worker stopped before finishing, and all ' \
                 || CAST(attempts AS TEXT) || ' attempts are used', \
         finished_at = $1, updated_at = $1, lease_owner = NULL, lease_until = NULL \
         WHERE status = 'running' AND lease_until < $1 AND attempts >= max_attempts",
    )
    .bind(now)
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    if done > 0 {
        state
            .metrics
            .executions
            .with_label_values(&["failed"])
            .inc_by(done);
    }
    Ok(done)
}

/// Deletes finished executions and webhook events from before `before_ms`
/// (unix ms); returns how many of each. Queued and running executions are
/// never deleted, however old.
pub async fn prune(state: &AppState, before_ms: i64) -> Result<(u64, u64)> {
    // `created_at <= finished_at`, so the created_at bound lets the
    // (status, created_at) index narrow the scan.
    let executions = sqlx::query(
        "DELETE FROM executions WHERE status IN ('succeeded', 'failed') \
         AND created_at < $1 AND finished_at < $1",
    )
    .bind(before_ms)
    .execute(&state.db.pool)
    .await?
    .rows_affected();
    let events = sqlx::query("DELETE FROM webhook_events WHERE received_at < $1")
        .bind(before_ms)
        .execute(&state.db.pool)
        .await?
        .rows_affected();
    Ok((executions, events))
}

/// How often the retention is applied.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Applies `--retention` at start, then hourly, until `shutdown`.
pub async fn retention_loop(state: AppState, retention: Duration, shutdown: CancellationToken) {
    let keep_ms = i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    while !shutdown.is_cancelled() {
        match prune(&state, now_ms().saturating_sub(keep_ms)).await {
            Ok((0, 0)) => {}
            Ok((executions, events)) => {
                tracing::info!(
                    executions,
                    webhook_events = events,
                    "deleted records past the retention"
                );
            }
            Err(e) => tracing::warn!(error = %e, "applying the retention failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// Renews a lease; false when the row is no longer ours (deleted, or
/// reclaimed after our lease ran out).
pub async fn heartbeat(state: &AppState, id: &str, worker: &str) -> Result<bool> {
    let now = now_ms();
    let until = now + state.config.queue.lease.as_millis() as i64;
    Ok(sqlx::query(
        "UPDATE executions SET lease_until = $1, updated_at = $2 \
         WHERE id = $3 AND lease_owner = $4 AND status = 'running'",
    )
    .bind(until)
    .bind(now)
    .bind(id)
    .bind(worker)
    .execute(&state.db.pool)
    .await?
    .rows_affected()
        == 1)
}

/// Records the outcome, if the row is still ours.
pub async fn finish(
    state: &AppState,
    id: &str,
    worker: &str,
    outcome: &std::result::Result<Value, Failure>,
) -> Result<bool> {
    let (status, output, error) = match outcome {
        Ok(v) => ("succeeded", Some(v.to_string()), None),
        Err(f) => (
            "failed",
            f.output.as_ref().map(Value::to_string),
            Some(f.message.clone()),
        ),
    };
    let now = now_ms();
    let mine = sqlx::query(
        "UPDATE executions SET status = $1, output = $2, error = $3, finished_at = $4, \
         updated_at = $4, lease_owner = NULL, lease_until = NULL \
         WHERE id = $5 AND lease_owner = $6 AND status = 'running'",
    )
    .bind(status)
    .bind(output)
    .bind(error)
    .bind(now)
    .bind(id)
    .bind(worker)
    .execute(&state.db.pool)
    .await?
    .rows_affected()
        == 1;
    if mine {
        state.metrics.executions.with_label_values(&[status]).inc();
    }
    Ok(mine)
}

/// Hands an execution back to the queue without counting the attempt
/// (graceful shutdown).
pub async fn release(state: &AppState, id: &str, worker: &str) -> Result<()> {
    sqlx::query(
        "UPDATE executions SET status = 'queued', attempts = attempts - 1, lease_owner = NULL, \
         lease_until = NULL, updated_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
    )
    .bind(now_ms())
    .bind(id)
    .bind(worker)
    .execute(&state.db.pool)
    .await?;
    Ok(())
}

#[derive(Debug, sqlx::FromRow)]
struct AgentRow {
    kind: String,
    config: String,
    integration_id: Option<String>,
}

async fn load_agent(state: &AppState, job: &Claimed) -> Result<Option<AgentSpec>> {
    let row = sqlx::query_as::<_, AgentRow>(
        "SELECT kind, config, integration_id FROM agents WHERE product = $1 AND id = $2",
    )
    .bind(&job.product)
    .bind(&job.agent_id)
    .fetch_optional(&state.db.pool)
    .await?;
    Ok(row.map(|r| AgentSpec {
        product: job.product.clone(),
        kind: r.kind,
        config: serde_json::from_str(&r.config).unwrap_or(Value::Null),
        integration_id: r.integration_id,
    }))
}

/// Starts `n` workers; they stop when `shutdown` is cancelled.
pub fn spawn_workers(state: &AppState, n: usize, shutdown: &CancellationToken) -> JoinSet<()> {
    let mut set = JoinSet::new();
    let instance = new_id("wrk");
    for i in 0..n {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        let worker = format!("{instance}-{i}");
        set.spawn(async move { worker_loop(state, worker, shutdown).await });
    }
    set
}

async fn worker_loop(state: AppState, worker: String, shutdown: CancellationToken) {
    let poll = state.config.queue.poll_interval;
    while !shutdown.is_cancelled() {
        match claim(&state, &worker).await {
            Ok(Some(job)) => {
                let span = tracing::info_span!(
                    "execution",
                    id = %job.id,
                    agent = %job.agent_id,
                    attempt = job.attempts
                );
                process(&state, &worker, job, &shutdown)
                    .instrument(span)
                    .await;
            }
            Ok(None) => {
                if let Err(e) = fail_exhausted(&state).await {
                    tracing::warn!(error = %e, "could not fail exhausted executions");
                }
                tokio::select! {
                    _ = state.queue_wake.notified() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not claim work");
                tokio::select! {
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
}

async fn process(state: &AppState, worker: &str, job: Claimed, shutdown: &CancellationToken) {
    state.metrics.running.inc();
    let input: Value = serde_json::from_str(&job.input).unwrap_or(Value::Null);
    let work = async {
        match load_agent(state, &job).await {
            Ok(Some(agent)) => kinds::run(state, &agent, &input).await,
            Ok(None) => Err(Failure {
                message: "the agent was deleted".into(),
                output: None,
            }),
            Err(e) => Err(Failure {
                message: format!("loading the agent: {e}"),
                output: None,
            }),
        }
    };
    let heartbeat_every = state.config.queue.lease / 3;
    let beat = async {
        loop {
            tokio::time::sleep(heartbeat_every).await;
            match heartbeat(state, &job.id, worker).await {
                Ok(true) => {}
                Ok(false) => return,
                // A transient database error: keep working; the lease is
                // three heartbeats long.
                Err(e) => tracing::warn!(error = %e, id = %job.id, "heartbeat failed"),
            }
        }
    };
    tokio::pin!(work);
    let outcome = tokio::select! {
        outcome = &mut work => Some(outcome),
        () = beat => {
            tracing::warn!(id = %job.id, "lost the lease (execution deleted or reclaimed); dropping it");
            None
        }
        () = shutdown.cancelled() => {
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut work).await {
                Ok(outcome) => Some(outcome),
                Err(_) => {
                    if let Err(e) = release(state, &job.id, worker).await {
                        tracing::warn!(error = %e, id = %job.id, "could not release at shutdown");
                    }
                    None
                }
            }
        }
    };
    state.metrics.running.dec();
    if let Some(outcome) = outcome {
        match finish(state, &job.id, worker, &outcome).await {
            Ok(true) => tracing::info!(
                id = %job.id,
                status = if outcome.is_ok() { "succeeded" } else { "failed" },
                "execution finished"
            ),
            Ok(false) => tracing::info!(id = %job.id, "execution finished but is no longer ours"),
            Err(e) => tracing::warn!(error = %e, id = %job.id, "could not record the outcome"),
        }
    }
}

//! Request migration: a generation that outlives its worker. When the worker streaming a
//! request is lost (keepalives stop, a reply message goes missing, the stream ends without a
//! finish reason), the request is dispatched again, up to `--migration-limit` times, to another
//! worker with the tokens generated so far appended to its prompt and its token budget reduced
//! by them; the client's stream goes on with no token repeated or missing, and the usage counts
//! the original prompt and every generated token once.

use std::sync::Arc;

use dynamo_protocols::{EngineOutput, FinishReason};
use dynamo_runtime::RuntimeError;
use futures::{FutureExt, StreamExt};

use super::dispatch::{dispatch, Dispatched};
use super::pipeline::{map_runtime_error, Job};
use super::AppState;
use crate::models::Lookup;
use crate::openai::ApiError;

/// One request's generation across the workers it needed.
pub struct Generation {
    stream: Dispatched,
    /// Every token id the client has been given.
    generated: Vec<u32>,
    /// Tokens generated before the current worker took over.
    offset: u32,
    attempt: u32,
    failed: Vec<u64>,
    finished: bool,
    /// A failure seen by [`Generation::ready`], handled by the next [`Generation::next`].
    pending: Option<Option<Result<EngineOutput, RuntimeError>>>,
}

/// Worker losses the request can be moved past; errors a worker reported on purpose are not.
fn migratable(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::InstanceLost(_)
            | RuntimeError::Gap { .. }
            | RuntimeError::Nats(_)
            | RuntimeError::Protocol(_)
    )
}

impl Generation {
    /// Dispatch `job` (first attempt).
    pub async fn start(state: &AppState, job: &Job) -> Result<Self, ApiError> {
        Ok(Generation {
            stream: dispatch(state, job).await?,
            generated: Vec::new(),
            offset: 0,
            attempt: 0,
            failed: Vec::new(),
            finished: false,
            pending: None,
        })
    }

    /// An item the current worker has already delivered, without waiting and without
    /// migrating: `None` when nothing is ready (or a failure is left for [`Self::next`]).
    pub fn ready(&mut self) -> Option<Option<Result<EngineOutput, ApiError>>> {
        if self.pending.is_some() {
            return None;
        }
        match self.stream.next().now_or_never()? {
            Some(Ok(o)) => Some(Some(Ok(self.account(o)))),
            other => {
                self.pending = Some(other);
                None
            }
        }
    }

    /// The next item, moving the request to another worker when its worker is lost.
    pub async fn next(
        &mut self,
        state: &Arc<AppState>,
        job: &Job,
    ) -> Option<Result<EngineOutput, ApiError>> {
        let status = state.admission.overload_status();
        loop {
            let item = match self.pending.take() {
                Some(p) => p,
                None => self.stream.next().await,
            };
            let reason = match item {
                Some(Ok(o)) => return Some(Ok(self.account(o))),
                Some(Err(e)) if migratable(&e) => e.to_string(),
                None if !self.finished => "the stream ended without a finish reason".into(),
                Some(Err(e)) => return Some(Err(map_runtime_error(e, status))),
                None => return None,
            };
            if self.attempt >= state.config.migration_limit {
                tracing::warn!(%reason, attempts = self.attempt, "worker lost; migration limit reached");
                return Some(Err(map_runtime_error(
                    RuntimeError::Protocol(format!("{reason} (after {} migrations)", self.attempt)),
                    status,
                )));
            }
            match self.migrate(state, job, &reason).await {
                Ok(Some(done)) => return Some(Ok(done)),
                Ok(None) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Count what the client is given and express the worker's usage in the request's terms.
    fn account(&mut self, mut o: EngineOutput) -> EngineOutput {
        self.generated.extend_from_slice(&o.token_ids);
        if o.finish_reason.is_some() {
            self.finished = true;
        }
        if let Some(u) = o.usage.as_mut() {
            u.prompt_tokens = u.prompt_tokens.saturating_sub(self.offset);
            u.completion_tokens += self.offset;
            u.cached_tokens = u.cached_tokens.min(u.prompt_tokens);
        }
        o
    }

    /// Send the rest of the request to another worker. `Some(item)`: nothing is left to
    /// generate (the budget was spent), this is its end.
    async fn migrate(
        &mut self,
        state: &Arc<AppState>,
        job: &Job,
        reason: &str,
    ) -> Result<Option<EngineOutput>, ApiError> {
        if job.request.n > 1 && !self.generated.is_empty() {
            // Each choice is a sequence of its own; the stream does not say where each one
            // stopped in a way another worker could continue all of them from.
            return Err(ApiError::new(
                crate::openai::ErrorClass::Unavailable,
                format!("{reason}; a request with several choices cannot be continued on another worker once tokens were sent"),
            ));
        }
        let model = &job.model;
        let kind = if self.generated.is_empty() {
            "new_request"
        } else {
            "ongoing_request"
        };
        state
            .metrics
            .migrations
            .with_label_values(&[model.as_str(), kind])
            .inc();
        self.failed.push(self.stream.instance_id);
        self.attempt += 1;
        let done = self.generated.len() as u32;
        tracing::warn!(%reason, attempt = self.attempt, generated = done, lost = %format!("{:x}", self.stream.instance_id), "worker lost mid-request; migrating");
        let max = job.request.stop.max_tokens.unwrap_or(u32::MAX);
        if done >= max {
            self.finished = true;
            return Ok(Some(EngineOutput {
                finish_reason: Some(FinishReason::Length),
                ..Default::default()
            }));
        }
        let instances = match state.models.lookup(model) {
            Lookup::Ready(_, i) => i,
            _ => vec![],
        };
        let mut next = job.clone();
        next.instances = instances
            .into_iter()
            .filter(|i| !self.failed.contains(&i.instance_id))
            .collect();
        if next.instances.is_empty() {
            return Err(ApiError::new(
                crate::openai::ErrorClass::Unavailable,
                format!("{reason}; no other worker of {model} is left to continue the request"),
            ));
        }
        next.request.token_ids.extend_from_slice(&self.generated);
        next.request.stop.max_tokens = Some(max - done);
        next.request.stop.min_tokens = next.request.stop.min_tokens.map(|m| m.saturating_sub(done));
        next.attempt = self.attempt;
        next.migrated_tokens = done;
        // A pinned worker is the one that was lost.
        next.params.backend_instance_id = None;
        next.call.request_id = format!("{}-m{}", job.call.request_id, self.attempt);
        self.stream = dispatch(state, &next).await?;
        self.offset = done;
        Ok(None)
    }
}

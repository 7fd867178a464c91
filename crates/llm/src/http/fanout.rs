//! A request's generations read as one stream: one per prompt of a batch (each with its `n`
//! choices on one worker), every item tagged with its prompt's place. A single prompt is read
//! directly; several each run in a task of their own feeding one channel, and dropping the
//! set aborts the tasks, which cancels their workers' requests.

use std::sync::Arc;

use dynamo_protocols::EngineOutput;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::migration::Generation;
use super::pipeline::Job;
use super::AppState;
use crate::openai::ApiError;

/// One item of one prompt's generation.
pub type Tagged = (usize, Result<EngineOutput, ApiError>);

/// The generations of a request.
pub enum Gens {
    One(Box<Generation>),
    Many {
        rx: mpsc::Receiver<Tagged>,
        _tasks: Vec<AbortOnDrop>,
    },
}

/// Aborts a prompt's task when the request's set is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Gens {
    /// Dispatch every job. One job: its dispatch error is returned here; several: each job's
    /// dispatch error is its first item.
    pub async fn start(state: &Arc<AppState>, jobs: &[Job]) -> Result<Gens, ApiError> {
        if let [job] = jobs {
            return Ok(Gens::One(Box::new(Generation::start(state, job).await?)));
        }
        let (tx, rx) = mpsc::channel(64);
        let tasks = jobs
            .iter()
            .enumerate()
            .map(|(j, job)| {
                let (state, job, tx) = (state.clone(), job.clone(), tx.clone());
                let run = async move {
                    let mut gen = match Generation::start(&state, &job).await {
                        Ok(g) => g,
                        Err(e) => {
                            let _ = tx.send((j, Err(e))).await;
                            return;
                        }
                    };
                    while let Some(item) = gen.next(&state, &job).await {
                        let failed = item.is_err();
                        if tx.send((j, item)).await.is_err() || failed {
                            return;
                        }
                    }
                };
                AbortOnDrop(tokio::spawn(run.in_current_span()))
            })
            .collect();
        Ok(Gens::Many { rx, _tasks: tasks })
    }

    /// The next item of any prompt; `None` once every generation has ended.
    pub async fn next(&mut self, state: &Arc<AppState>, jobs: &[Job]) -> Option<Tagged> {
        match self {
            Gens::One(g) => g.next(state, &jobs[0]).await.map(|i| (0, i)),
            Gens::Many { rx, .. } => rx.recv().await,
        }
    }

    /// An item that is already here, without waiting: `None` when nothing is ready (or what
    /// is pending must go through [`Gens::next`]).
    pub fn ready(&mut self) -> Option<Option<Tagged>> {
        match self {
            Gens::One(g) => g.ready().map(|o| o.map(|i| (0, i))),
            Gens::Many { rx, .. } => match rx.try_recv() {
                Ok(t) => Some(Some(t)),
                Err(mpsc::error::TryRecvError::Empty) => None,
                Err(mpsc::error::TryRecvError::Disconnected) => Some(None),
            },
        }
    }
}

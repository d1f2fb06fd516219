//! Stage reports to the control plane: every stage change of an allocation is POSTed to
//! the API's `/internal/runner/reports` with the allocation's generation, in order per allocation, retried with
//! backoff a few times. A report that cannot be delivered is logged, never fatal: the
//! control plane fences by generation, so a late or lost report cannot undo a newer one.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rhone_core::Secret;
use rhone_runner_protocol::StageReport;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use uuid::Uuid;

/// Attempts per report, the first included.
const ATTEMPTS: u32 = 4;
/// Wait before the first retry; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for one POST.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for reports still queued.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends reports, one queue per allocation.
#[derive(Debug)]
pub(crate) struct Reporter {
    client: reqwest::Client,
    url: Option<String>,
    /// This runner's name, sent with every report (`X-Rhone-Runner`).
    runner: String,
    token: Option<Secret>,
    senders: Mutex<Vec<JoinHandle<()>>>,
}

/// The report queue of one allocation; dropping it lets the queue drain and end.
#[derive(Debug, Clone)]
pub(crate) struct ReportQueue(Option<mpsc::UnboundedSender<StageReport>>);

impl ReportQueue {
    pub(crate) fn send(&self, report: StageReport) {
        if let Some(tx) = &self.0
            && tx.send(report).is_err()
        {
            tracing::warn!("report queue closed; report dropped");
        }
    }
}

impl Reporter {
    pub(crate) fn new(
        client: reqwest::Client,
        url: Option<String>,
        runner: String,
        token: Option<Secret>,
    ) -> Self {
        Reporter {
            client,
            url,
            runner,
            token,
            senders: Mutex::new(Vec::new()),
        }
    }

    /// A queue whose reports are sent in order by a task of their own.
    pub(crate) fn queue(&self, allocation_id: Uuid) -> ReportQueue {
        let Some(url) = self.url.clone() else {
            return ReportQueue(None);
        };
        let (tx, mut rx) = mpsc::unbounded_channel::<StageReport>();
        let (client, token, runner) =
            (self.client.clone(), self.token.clone(), self.runner.clone());
        let span = tracing::info_span!("reports", allocation_id = %allocation_id);
        let task = tokio::spawn(
            async move {
                while let Some(report) = rx.recv().await {
                    deliver(&client, &url, &runner, token.as_ref(), &report).await;
                }
            }
            .instrument(span),
        );
        let mut senders = self.senders.lock().unwrap_or_else(PoisonError::into_inner);
        senders.retain(|t| !t.is_finished());
        senders.push(task);
        ReportQueue(Some(tx))
    }

    /// Waits (a bounded time) for the queues whose senders are gone to drain.
    pub(crate) async fn flush(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.senders.lock().unwrap_or_else(PoisonError::into_inner));
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, all).await.is_err() {
            tracing::warn!("reports still queued at shutdown were dropped");
        }
    }
}

/// POSTs one report, retrying connection errors and 5xx answers with backoff. A 4xx
/// answer (a stale generation, a refused token) is final.
async fn deliver(
    client: &reqwest::Client,
    url: &str,
    runner: &str,
    token: Option<&Secret>,
    report: &StageReport,
) {
    let mut backoff = FIRST_BACKOFF;
    for attempt in 1..=ATTEMPTS {
        let mut request = client
            .post(url)
            .timeout(POST_TIMEOUT)
            .header(rhone_runner_protocol::RUNNER_HEADER, runner)
            .json(report);
        if let Some(token) = token {
            request = request.bearer_auth(token.expose());
        }
        let outcome = match request.send().await {
            Ok(r) if r.status().is_success() => {
                tracing::debug!(stage = %report.stage, generation = report.generation, "report delivered");
                return;
            }
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                tracing::warn!(
                    stage = %report.stage,
                    generation = report.generation,
                    %status,
                    body = %body.chars().take(300).collect::<String>(),
                    "the control plane refused a report"
                );
                return;
            }
            Ok(r) => format!("answered {}", r.status()),
            Err(e) => format!("failed: {e}"),
        };
        if attempt == ATTEMPTS {
            tracing::warn!(stage = %report.stage, generation = report.generation, attempts = ATTEMPTS, last = %outcome, "report not delivered");
            return;
        }
        tracing::debug!(attempt, last = %outcome, "report failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff *= 2;
    }
}

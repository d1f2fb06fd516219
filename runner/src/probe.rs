//! Readiness: `GET http://127.0.0.1:PORT{health_path}` polled until it answers 2xx or the
//! readiness timeout passes.

use std::time::Duration;

use tokio::time::Instant;

/// Pause between two probes.
const INTERVAL: Duration = Duration::from_millis(100);
/// Longest wait for one probe's answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The app did not become ready in time; `last` is what the last probe saw.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not ready after {timeout_ms} ms: GET {url} {last}")]
pub struct NotReady {
    pub url: String,
    pub timeout_ms: u128,
    pub last: String,
}

/// Polls `url` until it answers 2xx (`Ok`) or `timeout` passes.
pub(crate) async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<(), NotReady> {
    let deadline = Instant::now() + timeout;
    let mut last = "was not tried".to_owned();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(NotReady {
                url: url.to_owned(),
                timeout_ms: timeout.as_millis(),
                last,
            });
        }
        match client
            .get(url)
            .timeout(left.min(PROBE_TIMEOUT))
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("answered {}", response.status()),
            Err(e) if e.is_connect() => last = "was refused (nothing listens yet)".to_owned(),
            Err(e) if e.is_timeout() => last = "timed out".to_owned(),
            Err(e) => last = format!("failed: {e}"),
        }
        tokio::time::sleep_until((Instant::now() + INTERVAL).min(deadline)).await;
    }
}

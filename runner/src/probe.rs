//! Readiness: `GET http://127.0.0.1:PORT{health_path}` polled until it answers 2xx or the
//! readiness timeout passes.

use std::time::Duration;

use tokio::time::Instant;

/// Pause between two probes: a fortieth of the time waited so far, from 2 ms to 100 ms. A
/// fast app (a woken one, with a request held for it) is seen ready within 2.5 % of its
/// start time; a slow one costs a probe every 100 ms. A refused connection costs next to
/// nothing.
const MIN_INTERVAL: Duration = Duration::from_millis(2);
const MAX_INTERVAL: Duration = Duration::from_millis(100);

fn interval(waited: Duration) -> Duration {
    (waited / 40).clamp(MIN_INTERVAL, MAX_INTERVAL)
}
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
    let started = Instant::now();
    let deadline = started + timeout;
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
        let wait = left.min(PROBE_TIMEOUT);
        match client.get(url).timeout(wait).send().await {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => last = format!("answered {}", response.status()),
            Err(e) if e.is_connect() => last = "was refused (nothing listens yet)".to_owned(),
            // A probe cut short by the deadline says less than the answer before it.
            Err(e) if e.is_timeout() && wait < PROBE_TIMEOUT && last != "was not tried" => {}
            Err(e) if e.is_timeout() => last = "timed out".to_owned(),
            Err(e) => last = format!("failed: {e}"),
        }
        let pause = interval(started.elapsed());
        tokio::time::sleep_until((Instant::now() + pause).min(deadline)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_come_often_at_first_then_every_100_ms() {
        assert_eq!(interval(Duration::ZERO), MIN_INTERVAL);
        assert_eq!(
            interval(Duration::from_millis(200)),
            Duration::from_millis(5)
        );
        assert_eq!(interval(Duration::from_secs(2)), Duration::from_millis(50));
        assert_eq!(interval(Duration::from_secs(60)), MAX_INTERVAL);
    }
}

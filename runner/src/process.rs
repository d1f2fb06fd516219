//! An app process: `sh -c COMMAND` in its own process group, so signals reach its children
//! too; output pumped into the allocation's [`LogBuffer`]; always reaped, and its group
//! killed when it ends or is dropped, so nothing it started outlives it.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::task::JoinSet;

use crate::logs::{LogBuffer, pump};

/// How long the output pumps may take to drain after the process ended.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// A running (or just ended) app process.
#[derive(Debug)]
pub(crate) struct Process {
    child: Child,
    pid: u32,
    pumps: JoinSet<()>,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `sh -c command` in `cwd` with exactly `env`, in a new process group.
    pub(crate) fn spawn(
        command: &str,
        cwd: &Path,
        env: Vec<(String, String)>,
        logs: &Arc<LogBuffer>,
    ) -> std::io::Result<Process> {
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(cwd)
            .env_clear()
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let pid = child
            .id()
            .ok_or_else(|| std::io::Error::other("the process ended before it was seen"))?;
        let mut pumps = JoinSet::new();
        let span = tracing::Span::current();
        if let Some(out) = child.stdout.take() {
            pumps.spawn(tracing::Instrument::instrument(
                pump(out, logs.clone()),
                span.clone(),
            ));
        }
        if let Some(err) = child.stderr.take() {
            pumps.spawn(tracing::Instrument::instrument(
                pump(err, logs.clone()),
                span,
            ));
        }
        Ok(Process {
            child,
            pid,
            pumps,
            exited: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to end on its own. Cancel-safe; once it has ended, the rest of
    /// its group is killed and its output read to the end (within [`PUMP_DRAIN`]).
    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = match self.exited {
            Some(status) => status,
            None => {
                let status = self.child.wait().await?;
                self.exited = Some(status);
                // The leader is gone; anything it left behind in its group goes with it.
                self.signal_group(Signal::SIGKILL);
                status
            }
        };
        // Also after an earlier call was cancelled while draining.
        self.drain_pumps().await;
        Ok(status)
    }

    /// Stops the process: SIGTERM to its group, up to `deadline` to exit, then SIGKILL.
    /// Returns how it ended and whether the deadline ran out.
    pub(crate) async fn terminate(
        &mut self,
        deadline: Duration,
    ) -> std::io::Result<(ExitStatus, bool)> {
        if let Some(status) = self.exited {
            return Ok((status, false));
        }
        self.signal_group(Signal::SIGTERM);
        match tokio::time::timeout(deadline, self.wait()).await {
            Ok(status) => Ok((status?, false)),
            Err(_) => {
                tracing::warn!(pid = self.pid, ?deadline, "drain deadline passed; killing");
                self.signal_group(Signal::SIGKILL);
                Ok((self.wait().await?, true))
            }
        }
    }

    fn signal_group(&self, signal: Signal) {
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        match killpg(Pid::from_raw(raw), signal) {
            // ESRCH: the whole group is gone already.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
            Err(e) => {
                tracing::warn!(pid = self.pid, %signal, error = %e, "signalling the process group failed")
            }
        }
    }

    async fn drain_pumps(&mut self) {
        let drained = tokio::time::timeout(PUMP_DRAIN, async {
            while self.pumps.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::debug!(
                pid = self.pid,
                "app output still open after exit; no longer read"
            );
            self.pumps.abort_all();
        }
    }
}

impl Drop for Process {
    /// A process dropped while running (its task was cancelled, the runner is going away)
    /// is killed with its group; tokio reaps the leader in the background.
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.signal_group(Signal::SIGKILL);
        }
    }
}

/// How a process ended, in words: `exit code 3`, `signal 9 (SIGKILL)`.
pub(crate) fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => format!("{status}"),
    }
}

/// A free TCP port on the loopback interface. Another process could take it before the
/// app binds it; the app then fails to start and the allocation reports why.
pub(crate) fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

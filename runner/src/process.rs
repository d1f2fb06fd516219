//! An app process: `sh -c COMMAND` in a sandbox of its own (`rhone_sandbox`), under a
//! supervisor that outlives the runner (a runner that crashes leaves its apps running for
//! the next one to adopt, [`Process::adopt`]), its output pumped into the allocation's
//! [`LogBuffer`]; signals go to every process of the sandbox, and when it ends (or is
//! dropped) nothing it started outlives it: the sandbox's PID namespace ends with its first
//! process, and its container, cgroups and bundle are removed.

use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use rhone_sandbox::{Exit, Sandbox, SandboxSpec, Supervised};
use tokio::net::unix::pipe;
use tokio::task::JoinSet;

use crate::logs::{LogBuffer, pump};

/// How long the output pumps may take to drain after the process ended.
const PUMP_DRAIN: Duration = Duration::from_secs(1);

/// How a process ended: its status, and whether the OOM killer ended it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ended {
    /// `None`: the supervisor was killed before it could record the status.
    pub status: Option<ExitStatus>,
    pub oom_killed: bool,
    /// The drain deadline ran out and the sandbox was killed.
    pub killed_at_deadline: bool,
}

/// A running (or just ended) app process.
#[derive(Debug)]
pub(crate) struct Process {
    sandbox: Sandbox,
    id: String,
    supervised: Supervised,
    pumps: JoinSet<()>,
    exited: Option<(Option<ExitStatus>, Exit)>,
}

impl Process {
    /// Starts the prepared sandbox of `spec` under its supervisor.
    pub(crate) fn spawn(
        sandbox: &Sandbox,
        spec: &SandboxSpec,
        logs: &Arc<LogBuffer>,
    ) -> Result<Process, rhone_sandbox::SandboxError> {
        let (supervised, output) = sandbox.spawn_supervised(spec)?;
        Ok(Self::watch(sandbox, supervised, output, logs))
    }

    /// Watches a sandbox an earlier runner started and reads its output on.
    pub(crate) fn adopt(
        sandbox: &Sandbox,
        supervised: Supervised,
        output: pipe::Receiver,
        logs: &Arc<LogBuffer>,
    ) -> Process {
        Self::watch(sandbox, supervised, output, logs)
    }

    fn watch(
        sandbox: &Sandbox,
        supervised: Supervised,
        output: pipe::Receiver,
        logs: &Arc<LogBuffer>,
    ) -> Process {
        let mut pumps = JoinSet::new();
        pumps.spawn(tracing::Instrument::instrument(
            pump(output, logs.clone()),
            tracing::Span::current(),
        ));
        Process {
            sandbox: sandbox.clone(),
            id: supervised.id.clone(),
            supervised,
            pumps,
            exited: None,
        }
    }

    /// The host pid of the sandbox's first process, once the runtime has written it.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.sandbox.pid(&self.id)
    }

    /// Waits for the process to end on its own. Cancel-safe; once it has ended, the
    /// sandbox is removed and its output read to the end (within [`PUMP_DRAIN`]).
    pub(crate) async fn wait(&mut self) -> std::io::Result<Ended> {
        let (status, exit) = match self.exited {
            Some(ended) => ended,
            None => {
                let status = self.supervised.wait(&self.sandbox).await?;
                let exit = self.sandbox.finish(&self.id, status).await;
                self.exited = Some((status, exit));
                (status, exit)
            }
        };
        // Also after an earlier call was cancelled while draining.
        self.drain_pumps().await;
        Ok(Ended {
            status,
            oom_killed: exit.oom_killed,
            killed_at_deadline: false,
        })
    }

    /// Stops the process: SIGTERM to every process of the sandbox, up to `deadline` to
    /// exit, then SIGKILL.
    pub(crate) async fn terminate(&mut self, deadline: Duration) -> std::io::Result<Ended> {
        if self.exited.is_some() {
            return self.wait().await;
        }
        self.sandbox.signal(&self.id, Signal::SIGTERM).await;
        match tokio::time::timeout(deadline, self.wait()).await {
            Ok(ended) => ended,
            Err(_) => {
                tracing::warn!(sandbox = %self.id, ?deadline, "drain deadline passed; killing");
                self.sandbox.signal(&self.id, Signal::SIGKILL).await;
                let mut ended = self.wait().await?;
                ended.killed_at_deadline = true;
                Ok(ended)
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
                sandbox = %self.id,
                "app output still open after exit; no longer read"
            );
            self.pumps.abort_all();
        }
    }
}

impl Drop for Process {
    /// A process dropped while running (its task was cancelled, the runner is going away)
    /// is killed with its whole sandbox; what is left of the sandbox is removed by the
    /// next runner's `reap`.
    fn drop(&mut self) {
        if self.exited.is_none() {
            self.sandbox.kill_detached(&self.id);
        }
    }
}

//! Child processes of the deploy activities (git, the build command): each runs in a process
//! group of its own, so a time limit kills everything it started, not just the first
//! process. Arguments are passed as a list; nothing here interprets a shell string.

use std::process::{ExitStatus, Output, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// How a captured command ended, short of a normal exit.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot start {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {} s and was killed", .limit.as_secs())]
    TimedOut { program: String, limit: Duration },
    #[error("waiting for {program}: {source}")]
    Wait {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Prepares `command` to run in a new process group, with no stdin, killed if dropped.
pub fn isolate(command: &mut Command) -> &mut Command {
    command
        .process_group(0)
        .stdin(Stdio::null())
        .kill_on_drop(true)
}

/// Kills the whole process group led by `child` (SIGKILL). A group that is already gone is
/// not an error: this also sweeps up what a finished command left running.
pub fn kill_group(child: &Child) {
    if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok()) {
        kill_group_of(pid);
    }
}

/// Kills the process group `pgid` (SIGKILL); a group that is already gone is not an error.
pub fn kill_group_of(pgid: i32) {
    if let Err(err) = killpg(Pid::from_raw(pgid), Signal::SIGKILL)
        && err != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, error = %err, "cannot kill a process group");
    }
}

/// Runs `command` to completion with its stdout and stderr captured, killing its process
/// group after `limit`.
pub async fn run_captured(mut command: Command, limit: Duration) -> Result<Output, RunError> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    isolate(&mut command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = command.spawn().map_err(|source| RunError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pgid = child.id().and_then(|id| i32::try_from(id).ok());
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(output)) => {
            // Whatever the command left running in its group goes with it.
            if let Some(pgid) = pgid {
                kill_group_of(pgid);
            }
            Ok(output)
        }
        Ok(Err(source)) => Err(RunError::Wait { program, source }),
        Err(_elapsed) => {
            if let Some(pgid) = pgid {
                kill_group_of(pgid);
            }
            Err(RunError::TimedOut { program, limit })
        }
    }
}

/// `exited with status N` or `was killed by signal N`, for messages.
pub fn describe_exit(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => format!("ended with {status}"),
    }
}

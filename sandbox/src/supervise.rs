//! Sandboxes that outlive the process that started them, so a runner that crashed or was
//! killed can adopt its apps instead of restarting them.
//!
//! A supervised sandbox runs as `sh -c SUPERVISOR EXIT_FILE RUNTIME run …`, in a process
//! group of its own: the shell waits for the runtime's `run` (which ends with the
//! sandbox's first process) and writes its exit status to `exit` in the bundle, whoever
//! its parent is by then. The sandbox's stdout and stderr are a FIFO in the bundle
//! (`output`), which the sandbox holds open for reading as well as writing: without a
//! reader the app never gets `SIGPIPE`, its output waits in the pipe (up to 1 MiB, then its
//! writes block) until the next runner opens the FIFO and reads on. The supervisor's pid
//! and start time (`supervisor`) tell an adopter whether that very process still runs.

use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::stat::Mode;
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

use crate::{Sandbox, SandboxError, SandboxSpec, valid_id};

/// The supervisor: runs the runtime, then records how it ended (atomically).
const SUPERVISOR: &str = r#"exit_file=$1; shift
"$@"
code=$?
printf '%s\n' "$code" > "$exit_file.tmp" && mv -f "$exit_file.tmp" "$exit_file""#;
/// In the bundle: the supervisor's `pid start-time`, its exit status, the output FIFO.
const SUPERVISOR_FILE: &str = "supervisor";
const EXIT_FILE: &str = "exit";
const OUTPUT_FIFO: &str = "output";
/// How much output may wait in the FIFO while no runner reads it.
const PIPE_BYTES: i32 = 1 << 20;
/// How often an adopted supervisor is checked for having ended.
const ADOPTED_POLL: Duration = Duration::from_millis(100);

/// A supervised sandbox that runs: started here, or adopted from an earlier runner.
#[derive(Debug)]
pub struct Supervised {
    pub id: String,
    watch: Watch,
}

#[derive(Debug)]
enum Watch {
    /// Started by this process: its child.
    Child(Child),
    /// Adopted: another process's child, watched by pid and start time.
    Adopted { pid: u32, start: u64 },
}

/// What [`Sandbox::adopt`] found of a sandbox. Short-lived: its size does not matter.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Adoption {
    /// Its supervisor runs: watch it, read its output.
    Running(Supervised, pipe::Receiver),
    /// It ended while nobody watched: its exit status when the supervisor recorded one.
    Ended(Option<ExitStatus>),
}

impl Sandbox {
    /// Starts a prepared sandbox under a supervisor that outlives this process; returns it
    /// and the read end of the sandbox's output (stdout and stderr, interleaved).
    pub fn spawn_supervised(
        &self,
        spec: &SandboxSpec,
    ) -> Result<(Supervised, pipe::Receiver), SandboxError> {
        let bundle = self.bundle(&spec.id);
        let fifo = bundle.join(OUTPUT_FIFO);
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).map_err(|e| {
            SandboxError::Io {
                context: format!("making {}", fifo.display()),
                source: e.into(),
            }
        })?;
        // Read and write: the sandbox is a reader of its own output, so it never lacks one.
        let out = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&fifo)
            .map_err(SandboxError::io(format!("opening {}", fifo.display())))?;
        let _ = nix::fcntl::fcntl(&out, nix::fcntl::FcntlArg::F_SETPIPE_SZ(PIPE_BYTES));
        let err = out
            .try_clone()
            .map_err(SandboxError::io("duplicating the output FIFO"))?;
        let reader = pipe::OpenOptions::new()
            .open_receiver(&fifo)
            .map_err(SandboxError::io(format!("reading {}", fifo.display())))?;
        let (runtime, args) = self.run_argv(&spec.id);
        let child = Command::new("sh")
            .arg("-c")
            .arg(SUPERVISOR)
            .arg("rhone-supervisor")
            .arg(bundle.join(EXIT_FILE))
            .arg(runtime)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Not the runner's group: a terminal's ^C or a signal to the runner's group
            // does not reach the app; the runner stops it itself.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| SandboxError::Runtime {
                runtime: self.runtime.display().to_string(),
                problem: format!("starting `run` under its supervisor: {e}"),
            })?;
        if let Some(pid) = child.id() {
            let record = start_time(pid).map(|start| format!("{pid} {start}\n"));
            if let Some(record) = record {
                write_atomically(&bundle.join(SUPERVISOR_FILE), record.as_bytes())
                    .map_err(SandboxError::io("recording the supervisor"))?;
            }
        }
        Ok((
            Supervised {
                id: spec.id.clone(),
                watch: Watch::Child(child),
            },
            reader,
        ))
    }

    /// What is left of supervised sandbox `id` that an earlier process started: running
    /// (adopted here), or ended with what its supervisor recorded; `None` when it has no
    /// bundle or no record of a supervisor (it never started).
    pub fn adopt(&self, id: &str) -> Option<Adoption> {
        if !valid_id(id) {
            return None;
        }
        let bundle = self.bundle(id);
        let record = std::fs::read_to_string(bundle.join(SUPERVISOR_FILE)).ok()?;
        let (pid, start) = record.trim().split_once(' ')?;
        let (pid, start): (u32, u64) = (pid.parse().ok()?, start.parse().ok()?);
        if start_time(pid) == Some(start) {
            let fifo = bundle.join(OUTPUT_FIFO);
            if let Ok(reader) = pipe::OpenOptions::new().open_receiver(&fifo) {
                return Some(Adoption::Running(
                    Supervised {
                        id: id.to_owned(),
                        watch: Watch::Adopted { pid, start },
                    },
                    reader,
                ));
            }
        }
        Some(Adoption::Ended(exit_status(&bundle)))
    }
}

impl Supervised {
    /// Waits for the sandbox to end; its exit status as the supervisor recorded it (`None`
    /// when the supervisor itself was killed). Cancel-safe.
    pub async fn wait(&mut self, sandbox: &Sandbox) -> std::io::Result<Option<ExitStatus>> {
        match &mut self.watch {
            Watch::Child(child) => {
                child.wait().await?;
            }
            Watch::Adopted { pid, start } => {
                while start_time(*pid) == Some(*start) {
                    tokio::time::sleep(ADOPTED_POLL).await;
                }
            }
        }
        Ok(exit_status(&sandbox.bundle(&self.id)))
    }
}

/// The exit status the supervisor recorded in `bundle`.
fn exit_status(bundle: &Path) -> Option<ExitStatus> {
    let code: i32 = std::fs::read_to_string(bundle.join(EXIT_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (0..=255)
        .contains(&code)
        .then(|| ExitStatus::from_raw(code << 8))
}

/// When process `pid` started (clock ticks since boot, `/proc/PID/stat` field 22), unless
/// it is gone or a zombie: with the pid, it names one process, whatever reuses the pid.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields after it may not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let mut fields = rest.split(' ');
    let state = fields.next()?;
    if state == "Z" || state == "X" {
        return None;
    }
    // `rest` starts at field 3 (state); the start time is field 22.
    fields.nth(18)?.parse().ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_start_time() {
        let me = std::process::id();
        let start = start_time(me);
        assert!(start.is_some());
        assert_eq!(start, start_time(me));
        assert_eq!(start_time(u32::MAX), None);
    }

    #[test]
    fn exit_codes_are_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(exit_status(dir.path()).is_none());
        std::fs::write(dir.path().join(EXIT_FILE), "137\n").expect("write");
        let status = exit_status(dir.path()).expect("recorded");
        assert_eq!(status.code(), Some(137));
        std::fs::write(dir.path().join(EXIT_FILE), "-1\n").expect("write");
        assert!(exit_status(dir.path()).is_none(), "out of range");
    }
}

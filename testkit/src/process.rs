//! Server processes that live exactly as long as the test process, and waiting until a
//! server answers.

use std::fs;
use std::future::Future;
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::time::Instant;

/// The shell wrapper every server runs under; see the comments in the file.
const SUPERVISE: &str = include_str!("supervise.sh");

/// How often a starting server is asked whether it is up.
const POLL_EVERY: Duration = Duration::from_millis(50);

/// A server started under `supervise.sh`.
///
/// Dropping it closes the wrapper's stdin, which stops the server. Kept in a `static`, it
/// is never dropped: the pipe then closes when the test process exits, however it exits.
/// The plain `std` child (not `tokio::process`) is deliberate: it must outlive the tokio
/// runtime of the test that started it, as `#[tokio::test]` gives every test its own.
pub(crate) struct Supervised {
    child: Child,
    /// Never written; only its closing matters.
    _stdin: ChildStdin,
    dir: PathBuf,
}

impl Supervised {
    /// Starts `program args` under the wrapper, as `run_as` when given (through `runuser`,
    /// so the caller must be root). Its output goes to `dir/server.log`; `dir` must be
    /// writable by that user and is removed after the server is stopped.
    pub(crate) fn spawn(
        dir: &Path,
        run_as: Option<&str>,
        program: &Path,
        args: &[String],
    ) -> Result<Self> {
        // A file rather than `sh -c`, so `ps` shows which server a wrapper is for.
        let script = dir.join("supervise.sh");
        fs::write(&script, SUPERVISE).with_context(|| format!("writing {}", script.display()))?;
        let mut command = match run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", "sh"]);
                c
            }
            None => Command::new("sh"),
        };
        command
            .arg(&script)
            .arg(dir)
            .arg(program)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::piped())
            // The server writes to its log file; nothing may hold the test runner's pipes.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        let stdin = child.stdin.take().context("the wrapper's stdin is piped")?;
        Ok(Self {
            child,
            _stdin: stdin,
            dir: dir.to_owned(),
        })
    }

    fn exited(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .context("checking on a server process")
    }

    /// The end of the server's log, for error messages.
    fn log_tail(&self) -> String {
        const TAIL_BYTES: u64 = 4000;
        let path = self.dir.join("server.log");
        let read = || -> std::io::Result<String> {
            let mut file = fs::File::open(&path)?;
            let len = file.metadata()?.len();
            file.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        match read() {
            Ok(text) if text.trim().is_empty() => "(the log is empty)".to_owned(),
            Ok(text) => text,
            Err(e) => format!("(could not read {}: {e})", path.display()),
        }
    }
}

/// Why a server did not become ready.
#[derive(Debug)]
pub(crate) enum NotReady {
    /// It exited first, for instance because another process took its port.
    Exited(anyhow::Error),
    /// It kept running without answering, or could not be set up: retrying won't help.
    Failed(anyhow::Error),
}

impl NotReady {
    pub(crate) fn into_error(self) -> anyhow::Error {
        match self {
            NotReady::Exited(e) | NotReady::Failed(e) => e,
        }
    }
}

/// Polls `probe` until it succeeds, the server exits, or `timeout` passes.
///
/// The server's directory is left to the caller, who created it as a `TempDir`: it is
/// removed when that drops on failure, and by the wrapper after a stop once `keep`-ed.
pub(crate) async fn wait_ready<F, Fut>(
    what: &str,
    server: &mut Supervised,
    timeout: Duration,
    mut probe: F,
) -> std::result::Result<(), NotReady>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<(), String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match server.exited() {
            Ok(Some(status)) => {
                let log = server.log_tail();
                return Err(NotReady::Exited(anyhow::anyhow!(
                    "{what} exited ({status}) before answering; its log ends with:\n{log}"
                )));
            }
            Ok(None) => {}
            Err(e) => return Err(NotReady::Exited(e)),
        }
        let last_error = match probe().await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(NotReady::Failed(anyhow::anyhow!(
                "{what} did not answer within {timeout:?} (last probe: {last_error}); \
                 its log ends with:\n{}",
                server.log_tail()
            )));
        }
        tokio::time::sleep_until((Instant::now() + POLL_EVERY).min(deadline)).await;
    }
}

/// Runs a short probe command; `Err` holds what it printed.
pub(crate) async fn probe_command(
    mut command: tokio::process::Command,
    timeout: Duration,
) -> std::result::Result<(), String> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    match tokio::time::timeout(timeout, command.output()).await {
        Err(_) => Err(format!("no answer within {timeout:?}")),
        Ok(Err(e)) => Err(format!("could not run: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago. Another process may take it before
/// the server binds it; callers retry when the server exits early.
pub(crate) fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The first `name` on `PATH` that is an executable file.
pub(crate) fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            fs::metadata(candidate).is_ok_and(|m| m.is_file() && m.mode() & 0o111 != 0)
        })
}

/// Whether this process runs as root. `/proc/self` belongs to the process's user.
pub(crate) fn is_root() -> Result<bool> {
    let meta = fs::metadata("/proc/self").context("reading /proc/self to learn our user")?;
    Ok(meta.uid() == 0)
}

/// Runs a setup command to completion and fails with its output when it fails.
pub(crate) async fn run(mut command: tokio::process::Command, what: &str) -> Result<()> {
    command.stdin(Stdio::null()).kill_on_drop(true);
    let out = command
        .output()
        .await
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

//! `Sandbox`: runs sandboxes with `crun` (`crun run`, in the foreground, its stdout and
//! stderr the caller's), signals them (every process of their cgroup), and cleans up after
//! them (the container, its cgroups and its bundle), also after a crash of the process that
//! started them (`reap`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use nix::sys::signal::Signal;
use tokio::process::{Child, Command};

use crate::cgroup::Cgroups;
use crate::{SandboxError, SandboxSpec, spec, valid_id};

/// Where the runtime writes the sandbox's first pid, in its bundle.
pub(crate) const PID_FILE: &str = "pid";
/// The runtime used when the configuration names none.
pub const DEFAULT_RUNTIME: &str = "crun";

/// Where the runtime is and where a sandbox keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// The OCI runtime binary. Default [`DEFAULT_RUNTIME`] (on `PATH`).
    pub runtime: PathBuf,
    /// The runtime's state (`runtime/`) and the bundles (`bundles/<id>/`) of this owner's
    /// sandboxes; also scopes their cgroups, so two owners never touch each other's.
    pub state_dir: PathBuf,
    /// The cgroup, in every hierarchy, under which the sandboxes' cgroups are made
    /// (`<parent>/rhone-<scope>/<id>`). Default `/`, the hierarchies' roots: sandboxes are
    /// not counted in their owner's own cgroup and outlive it.
    pub cgroup_parent: String,
}

impl SandboxConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        SandboxConfig {
            runtime: PathBuf::from(DEFAULT_RUNTIME),
            state_dir: state_dir.into(),
            cgroup_parent: "/".to_owned(),
        }
    }
}

/// Runs sandboxes of one owner (a runner, a builder).
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub(crate) runtime: PathBuf,
    pub(crate) root: PathBuf,
    bundles: PathBuf,
    cgroups: Cgroups,
}

/// A sandbox whose process runs: `child` is the runtime's `run`, which ends when the
/// sandbox's first process does, with its exit status.
#[derive(Debug)]
pub struct Started {
    pub id: String,
    pub child: Child,
}

/// How a sandbox ended, beyond its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The OOM killer ended the sandbox: SIGKILL, and its memory had met the limit.
    pub oom_killed: bool,
}

impl Sandbox {
    /// Checks that the runtime runs and the cgroup hierarchies are there, and makes the
    /// state directories.
    pub fn new(config: &SandboxConfig) -> Result<Sandbox, SandboxError> {
        let runtime_name = config.runtime.display().to_string();
        let version = std::process::Command::new(&config.runtime)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SandboxError::Runtime {
                runtime: runtime_name.clone(),
                problem: format!(
                    "{e} (install it: apt-get install crun; scripts/install-deps.sh does)"
                ),
            })?;
        if !version.status.success() {
            return Err(SandboxError::Runtime {
                runtime: runtime_name,
                problem: format!("`--version` exited with {}", version.status),
            });
        }
        let root = config.state_dir.join("runtime");
        let bundles = config.state_dir.join("bundles");
        for dir in [&root, &bundles] {
            std::fs::create_dir_all(dir)
                .map_err(SandboxError::io(format!("creating {}", dir.display())))?;
        }
        let scope = scope_of(&config.state_dir);
        Ok(Sandbox {
            runtime: config.runtime.clone(),
            root,
            bundles,
            cgroups: Cgroups::detect(&config.cgroup_parent, &scope)?,
        })
    }

    pub(crate) fn bundle(&self, id: &str) -> PathBuf {
        self.bundles.join(id)
    }

    /// The runtime with its global options.
    fn runtime(&self) -> Command {
        let mut command = Command::new(&self.runtime);
        command.arg("--root").arg(&self.root).stdin(Stdio::null());
        command
    }

    /// Writes the bundle, makes the cgroups with the limits and starts the sandbox. The
    /// process starts with stdin closed and `stdout`/`stderr` as given.
    pub async fn start(
        &self,
        spec: &SandboxSpec,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Started, SandboxError> {
        self.prepare(spec).await?;
        self.spawn(spec, stdout, stderr)
    }

    /// Everything before the process: checks the spec, clears what an earlier attempt of
    /// the id left, writes the bundle, makes the cgroups with the limits. A caller may do
    /// other work meanwhile (the network namespace a [`Network::Join`] names) and
    /// [`Sandbox::spawn`] once both are done; [`Sandbox::discard`] undoes it.
    ///
    /// [`Network::Join`]: crate::Network::Join
    pub async fn prepare(&self, spec: &SandboxSpec) -> Result<(), SandboxError> {
        if !valid_id(&spec.id) {
            return Err(SandboxError::Invalid(format!(
                "sandbox id {:?}: expected [a-z0-9-], 1 to 64 characters",
                spec.id
            )));
        }
        spec.limits.check().map_err(|(field, range)| {
            SandboxError::Invalid(format!(
                "limits.{field}: expected {} to {}",
                range.start(),
                range.end()
            ))
        })?;
        self.end_leftover(&spec.id).await;
        let bundle = self.bundle(&spec.id);
        let (this, owned) = (self.clone(), spec.clone());
        let cgroups_path = self.cgroups.runtime_path(&spec.id);
        tokio::task::spawn_blocking(move || {
            // A bundle left by an earlier attempt of the same id is replaced.
            let _ = std::fs::remove_dir_all(&bundle);
            spec::write_bundle(&owned, &bundle, &cgroups_path)?;
            this.cgroups.create(&owned.id, &owned.limits)
        })
        .await
        .map_err(|e| SandboxError::Io {
            context: "preparing the sandbox".into(),
            source: std::io::Error::other(e),
        })?
    }

    /// Starts a prepared sandbox's process: the runtime's `run`, with stdin closed and
    /// `stdout`/`stderr` as given.
    pub fn spawn(
        &self,
        spec: &SandboxSpec,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Started, SandboxError> {
        let (program, args) = self.run_argv(&spec.id);
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| SandboxError::Runtime {
                runtime: self.runtime.display().to_string(),
                problem: format!("starting `run`: {e}"),
            })?;
        Ok(Started {
            id: spec.id.clone(),
            child,
        })
    }

    /// The runtime and the arguments of its `run` of prepared sandbox `id`: it runs in the
    /// foreground and ends with the sandbox's first process, writing its pid to the bundle.
    pub(crate) fn run_argv(&self, id: &str) -> (&Path, Vec<std::ffi::OsString>) {
        let bundle = self.bundle(id);
        let args = vec![
            "--root".into(),
            self.root.clone().into(),
            "run".into(),
            "--bundle".into(),
            bundle.clone().into(),
            "--pid-file".into(),
            bundle.join(PID_FILE).into(),
            id.into(),
        ];
        (&self.runtime, args)
    }

    /// Sends `signal` to every process of the sandbox (of its cgroup). A sandbox that is
    /// gone is no error.
    pub async fn signal(&self, id: &str, signal: Signal) {
        let (cgroups, id) = (self.cgroups.clone(), id.to_owned());
        let _ = tokio::task::spawn_blocking(move || cgroups.signal(&id, signal)).await;
    }

    /// SIGKILL to every process of the sandbox, synchronously: for `Drop`, where nothing
    /// can be awaited and the process may be about to exit.
    pub fn kill_detached(&self, id: &str) {
        self.cgroups.signal(id, Signal::SIGKILL);
    }

    /// After the sandbox's `run` ended with `status`: whether the OOM killer ended it (it
    /// was killed by SIGKILL after its memory met the limit; with no status, whether its
    /// memory met the limit), then the container, its cgroups and its bundle are removed.
    pub async fn finish(&self, id: &str, status: Option<std::process::ExitStatus>) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let sigkill = status
            .is_none_or(|status| status.code() == Some(128 + 9) || status.signal() == Some(9));
        let oom_killed = sigkill && self.cgroups.memory_limit_reached(id);
        self.delete(id).await;
        Exit { oom_killed }
    }

    /// The host pid of the sandbox's first process, once the runtime has started it.
    pub fn pid(&self, id: &str) -> Option<u32> {
        std::fs::read_to_string(self.bundle(id).join(PID_FILE))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Ends a sandbox of this id that an earlier attempt left behind (its starter was
    /// killed: a worker lost mid-build): its processes are killed and it is removed.
    /// Whether there was one.
    pub async fn end_leftover(&self, id: &str) -> bool {
        if !self.root.join(id).exists() {
            return false;
        }
        self.signal(id, Signal::SIGKILL).await;
        self.delete(id).await;
        true
    }

    /// Undoes a [`Sandbox::prepare`] whose process never started.
    pub async fn discard(&self, id: &str) {
        self.delete(id).await;
    }

    /// Processes in the sandbox now (`pids.current` of its cgroup).
    pub fn pids(&self, id: &str) -> Option<u64> {
        self.cgroups.pids(id)
    }

    async fn delete(&self, id: &str) {
        let _ = self
            .runtime()
            .args(["delete", "--force", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        let (cgroups, bundle, id) = (self.cgroups.clone(), self.bundle(id), id.to_owned());
        let _ = tokio::task::spawn_blocking(move || {
            // Nothing of the sandbox outlives it, whatever the runtime left.
            for _ in 0..50 {
                if cgroups.kill_remaining(&id) == 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            cgroups.remove(&id);
            if let Err(e) = std::fs::remove_dir_all(&bundle)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(bundle = %bundle.display(), error = %e, "cannot remove a sandbox bundle");
            }
        })
        .await;
    }

    /// Kills and removes every sandbox of this owner: those a crashed predecessor left.
    /// Returns how many there were.
    pub async fn reap(&self) -> usize {
        self.reap_except(&[]).await
    }

    /// Kills and removes every sandbox of this owner but those of `keep` (adopted ones).
    /// Returns how many there were.
    pub async fn reap_except(&self, keep: &[String]) -> usize {
        let mut ids: Vec<String> = Vec::new();
        if let Ok(out) = self.runtime().args(["list", "--quiet"]).output().await {
            ids.extend(
                String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_owned),
            );
        }
        ids.extend(self.cgroups.existing());
        if let Ok(entries) = std::fs::read_dir(&self.bundles) {
            ids.extend(
                entries
                    .flatten()
                    .filter_map(|e| e.file_name().into_string().ok()),
            );
        }
        ids.sort();
        ids.dedup();
        ids.retain(|id| valid_id(id) && !keep.contains(id));
        for id in &ids {
            self.signal(id, Signal::SIGKILL).await;
            self.delete(id).await;
        }
        ids.len()
    }
}

/// A short stable name for a state directory.
fn scope_of(dir: &Path) -> String {
    let hash = crate::fnv1a(dir.as_os_str().as_encoded_bytes());
    format!("{:010x}", hash & 0xff_ffff_ffff)
}

/// How a sandbox's `run` ended, in words: the runtime exits with the process's code, or
/// 128 + the signal that ended it.
pub fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) if code > 128 => match Signal::try_from(code - 128) {
            Ok(sig) => format!("signal {} ({sig})", code - 128),
            Err(_) => format!("exit code {code}"),
        },
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => match Signal::try_from(sig) {
            Ok(name) => format!("signal {sig} ({name})"),
            Err(_) => format!("signal {sig}"),
        },
        (None, None) => format!("{status}"),
    }
}

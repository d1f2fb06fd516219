//! The sandbox's own cgroup, `/rhone-<scope>/<id>` in every cgroup hierarchy, holding its
//! limits in the v1 `memory`, `pids` and `cpu` ones. The runtime puts the container in a
//! child of it (`/rhone-<scope>/<id>/c`) and removes that child when the container ends; the
//! limits and their counters stay on ours, so the runner can tell an out-of-memory kill from
//! any other end.
//!
//! crun refuses to run on a host whose v2 hierarchy, mounted beside the v1 ones, holds a
//! controller ("cgroups in hybrid mode not supported"): [`Cgroups::detect`] mounts such a
//! controller as a v1 hierarchy of its own first, as systemd's hybrid layout does.

use std::path::{Path, PathBuf};

use crate::{Limits, SandboxError};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where a host with v1 hierarchies mounts the v2 one beside them.
const UNIFIED: &str = "/sys/fs/cgroup/unified";
/// The runtime's container cgroup, under a sandbox's.
const LEAF: &str = "c";
/// How close to the limit a peak counts as having met it: the kernel charges in pages and
/// batches.
const PEAK_SLACK: u64 = 256 << 10;
/// CPU quota period, µs.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, Clone)]
pub(crate) struct Cgroups {
    /// The directory of this owner's sandboxes in every hierarchy, relative to its root:
    /// `[<configured parent>/]rhone-<scope>`, so owners on one host (tests) never see each
    /// other's sandboxes.
    parent: String,
    /// Every hierarchy the runtime makes the container's cgroup in: its controllers (empty
    /// for v2) and where it is mounted.
    hierarchies: Vec<(String, PathBuf)>,
}

impl Cgroups {
    /// Finds the cgroup hierarchies (moving controllers off a hybrid host's v2 hierarchy
    /// first); fails on a host without the v1 `memory`, `pids` and `cpu` ones.
    pub(crate) fn detect(parent: &str, scope: &str) -> Result<Cgroups, SandboxError> {
        let parent = parent.trim_matches('/');
        if parent.split('/').any(|part| matches!(part, "." | ".."))
            || parent.chars().any(|c| c.is_control() || c == ':')
        {
            return Err(SandboxError::Invalid(format!(
                "cgroup parent {parent:?}: expected a path like /rhone.slice"
            )));
        }
        move_v2_controllers()?;
        let text = std::fs::read_to_string("/proc/self/cgroup")
            .map_err(SandboxError::io("reading /proc/self/cgroup"))?;
        let mut hierarchies = Vec::new();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_), Some(controllers)) = (parts.next(), parts.next()) else {
                continue;
            };
            let mount = if controllers.is_empty() {
                PathBuf::from(UNIFIED)
            } else {
                Path::new(CGROUP_ROOT).join(controllers.trim_start_matches("name="))
            };
            if mount.is_dir() {
                hierarchies.push((controllers.to_owned(), mount));
            }
        }
        let cgroups = Cgroups {
            parent: if parent.is_empty() {
                format!("rhone-{scope}")
            } else {
                format!("{parent}/rhone-{scope}")
            },
            hierarchies,
        };
        for needed in ["memory", "pids", "cpu"] {
            if cgroups.dir_of(needed).is_none() {
                return Err(SandboxError::Runtime {
                    runtime: "cgroups".into(),
                    problem: format!(
                        "no cgroup v1 `{needed}` hierarchy under {CGROUP_ROOT} (cgroup v2-only hosts are not supported yet)"
                    ),
                });
            }
        }
        Ok(cgroups)
    }

    fn dir_of(&self, controller: &str) -> Option<&Path> {
        self.hierarchies
            .iter()
            .find(|(c, _)| c.split(',').any(|c| c == controller))
            .map(|(_, p)| p.as_path())
    }

    fn sandbox_dir(&self, controller: &str, id: &str) -> Option<PathBuf> {
        Some(self.dir_of(controller)?.join(&self.parent).join(id))
    }

    /// The container's cgroup as the runtime is given it.
    pub(crate) fn runtime_path(&self, id: &str) -> String {
        format!("/{}/{id}/{LEAF}", self.parent)
    }

    /// Makes the sandbox's cgroups and sets `limits` on them.
    pub(crate) fn create(&self, id: &str, limits: &Limits) -> Result<(), SandboxError> {
        let memory = limits.memory_bytes().to_string();
        let quota = (u64::from(limits.cpu_millis) * CPU_PERIOD_US / 1000).to_string();
        let settings: [(&str, &[(&str, &str)]); 3] = [
            (
                "memory",
                &[
                    ("memory.limit_in_bytes", &memory),
                    // Swap counts too, where the kernel accounts it: the limit is the limit.
                    ("memory.memsw.limit_in_bytes", &memory),
                ],
            ),
            ("pids", &[("pids.max", &limits.max_pids.to_string())]),
            (
                "cpu",
                &[
                    ("cpu.cfs_period_us", &CPU_PERIOD_US.to_string()),
                    ("cpu.cfs_quota_us", &quota),
                ],
            ),
        ];
        for (controller, files) in settings {
            let Some(dir) = self.sandbox_dir(controller, id) else {
                continue;
            };
            // The owner's directory may be removed by its last sandbox's cleanup between
            // the two `mkdir`s: then again.
            let mut made = std::fs::create_dir_all(&dir);
            for _ in 0..3 {
                match &made {
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        made = std::fs::create_dir_all(&dir);
                    }
                    _ => break,
                }
            }
            made.map_err(SandboxError::io(format!(
                "creating cgroup {}",
                dir.display()
            )))?;
            for (file, value) in files {
                let path = dir.join(file);
                if *file == "memory.memsw.limit_in_bytes" && !path.exists() {
                    continue;
                }
                std::fs::write(&path, value).map_err(SandboxError::io(format!(
                    "writing {value} to {}",
                    path.display()
                )))?;
            }
        }
        Ok(())
    }

    /// Whether the sandbox's memory use met its limit: the OOM killer killed in it
    /// (`oom_kill` of `memory.oom_control`), a hit was counted (`failcnt`) or its peak
    /// reached the limit. (With swap accounted, the memory+swap counter is charged first,
    /// and `failcnt` is not always counted.)
    pub(crate) fn memory_limit_reached(&self, id: &str) -> bool {
        let Some(dir) = self.sandbox_dir("memory", id) else {
            return false;
        };
        let read = |file: &str| -> Option<u64> {
            std::fs::read_to_string(dir.join(file))
                .ok()?
                .trim()
                .parse()
                .ok()
        };
        let oom_kills = std::fs::read_to_string(dir.join("memory.oom_control"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0);
        let hits = oom_kills
            + read("memory.failcnt").unwrap_or(0)
            + read("memory.memsw.failcnt").unwrap_or(0);
        let limit = read("memory.limit_in_bytes").unwrap_or(u64::MAX);
        let peak = read("memory.max_usage_in_bytes")
            .unwrap_or(0)
            .max(read("memory.memsw.max_usage_in_bytes").unwrap_or(0));
        hits > 0 || peak.saturating_add(PEAK_SLACK) >= limit
    }

    /// Processes in the sandbox's cgroup right now (its `pids.current`).
    pub(crate) fn pids(&self, id: &str) -> Option<u64> {
        let dir = self.sandbox_dir("pids", id)?;
        std::fs::read_to_string(dir.join("pids.current"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Sends `signal` to every process in the sandbox's cgroups (the container's and
    /// ours); returns to how many.
    pub(crate) fn signal(&self, id: &str, signal: nix::sys::signal::Signal) -> usize {
        let Some(dir) = self.sandbox_dir("pids", id) else {
            return 0;
        };
        [dir.join(LEAF), dir]
            .iter()
            .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| {
                text.lines()
                    .filter_map(|l| l.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .filter(|pid| nix::sys::signal::kill(nix::unistd::Pid::from_raw(*pid), signal).is_ok())
            .count()
    }

    /// SIGKILL to every process still in the sandbox's cgroup: the runtime's delete should
    /// have left none; this makes sure. Returns how many.
    pub(crate) fn kill_remaining(&self, id: &str) -> usize {
        self.signal(id, nix::sys::signal::Signal::SIGKILL)
    }

    /// Removes the sandbox's cgroups (and a container cgroup the runtime left) in every
    /// hierarchy; a cgroup still holding a process stays, and is logged.
    pub(crate) fn remove(&self, id: &str) {
        for (_, mount) in &self.hierarchies {
            let parent = mount.join(&self.parent);
            let dir = parent.join(id);
            for path in [dir.join(LEAF), dir] {
                match std::fs::remove_dir(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(cgroup = %path.display(), error = %e, "cannot remove a sandbox cgroup")
                    }
                }
            }
            // The owner's directory goes with its last sandbox; one still holding another
            // sandbox is not removed, and that is fine.
            let _ = std::fs::remove_dir(&parent);
        }
    }

    /// The ids of sandboxes whose cgroups exist (for the cleanup after a crash).
    pub(crate) fn existing(&self) -> Vec<String> {
        let Some(dir) = self.dir_of("memory") else {
            return Vec::new();
        };
        std::fs::read_dir(dir.join(&self.parent))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()
    }
}

/// Mounts each controller the v2 hierarchy holds on a hybrid host as a v1 hierarchy of its
/// own (`/sys/fs/cgroup/<controller>`), which moves it off the v2 one.
fn move_v2_controllers() -> Result<(), SandboxError> {
    let Ok(text) = std::fs::read_to_string(Path::new(UNIFIED).join("cgroup.controllers")) else {
        return Ok(()); // no v2 hierarchy beside the v1 ones
    };
    for controller in text.split_whitespace() {
        let dir = Path::new(CGROUP_ROOT).join(controller);
        let moved = std::fs::create_dir_all(&dir)
            .map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)))
            .and_then(|()| {
                nix::mount::mount(
                    Some("cgroup"),
                    &dir,
                    Some("cgroup"),
                    nix::mount::MsFlags::empty(),
                    Some(controller),
                )
            });
        match moved {
            Ok(()) => {
                tracing::info!(controller, mount = %dir.display(), "moved a cgroup controller from the v2 hierarchy to v1 (the runtime refuses hybrid hosts otherwise)")
            }
            Err(e) => {
                return Err(SandboxError::Runtime {
                    runtime: "cgroups".into(),
                    problem: format!(
                        "the cgroup v2 hierarchy at {UNIFIED} holds `{controller}`, which crun refuses, and mounting it as v1 at {} failed: {e}",
                        dir.display()
                    ),
                });
            }
        }
    }
    Ok(())
}

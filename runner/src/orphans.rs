//! Processes a previous run of the runner left behind when it was killed before it could
//! stop them. Every app process's pid is kept in `allocations/<id>/pid` while it runs; at
//! start, a recorded process that still carries `RHONE_ALLOCATION_ID=<id>` in its
//! environment is killed with its group. The environment check keeps a reused pid safe.

use std::io;
use std::path::Path;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use uuid::Uuid;

const PID_FILE: &str = "pid";

/// Records that `pid` runs for the allocation whose directory is `dir`.
pub(crate) fn record(dir: &Path, pid: u32) {
    if let Err(e) = std::fs::write(dir.join(PID_FILE), pid.to_string()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot record the app's pid");
    }
}

/// Forgets the pid of the allocation whose directory is `dir`: its process has ended.
pub(crate) fn forget(dir: &Path) {
    match std::fs::remove_file(dir.join(PID_FILE)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the pid file"),
    }
}

/// Kills the recorded processes under `allocations` that are still those of their
/// allocation, and forgets every record. Returns how many were killed.
pub(crate) fn reap(allocations: &Path) -> usize {
    let entries = match std::fs::read_dir(allocations) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return 0,
        Err(e) => {
            tracing::warn!(dir = %allocations.display(), error = %e, "cannot look for orphaned apps");
            return 0;
        }
    };
    let mut killed = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let Some(id) = entry
            .file_name()
            .to_str()
            .and_then(|n| Uuid::parse_str(n).ok())
        else {
            continue;
        };
        let Some(pid) = std::fs::read_to_string(dir.join(PID_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        else {
            continue;
        };
        if runs_for(pid, id) {
            match killpg(Pid::from_raw(pid), Signal::SIGKILL) {
                Ok(()) => {
                    tracing::warn!(allocation_id = %id, pid, "killed an app a previous runner left running");
                    killed += 1;
                }
                Err(e) => {
                    tracing::warn!(allocation_id = %id, pid, error = %e, "cannot kill an orphaned app")
                }
            }
        }
        forget(&dir);
    }
    killed
}

/// Whether process `pid` is alive and was started for allocation `id`.
fn runs_for(pid: i32, id: Uuid) -> bool {
    let marker = format!("RHONE_ALLOCATION_ID={id}");
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|environ| {
            environ
                .split(|b| *b == 0)
                .any(|var| var == marker.as_bytes())
        })
        .unwrap_or(false)
}

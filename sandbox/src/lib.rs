//! Tenant code (a build, an allocation) runs in a sandbox made by an OCI runtime, `crun`,
//! from a runtime spec written with the `oci-spec` crate (`spec`): its own user, PID,
//! mount, IPC, UTS and network namespaces, uid 1000 mapped to an unprivileged host range, no
//! capabilities, `no_new_privs`, a seccomp filter (`seccomp`), a read-only root made of the
//! system's `/usr`, `/lib`, `/bin` and what the caller binds (the artifact read-only, a
//! writable home), and a private `/tmp`. Its limits (memory, CPU, pids) are set on a cgroup
//! of its own (`cgroup`) that the runtime's container cgroup sits in, so the OOM count
//! outlives the container. Allocations get a network namespace on the runner's bridge
//! (`net`); builds get one with loopback only.
//!
//! Entry point: [`Sandbox`].

mod cgroup;
pub mod net;
mod runtime;
mod seccomp;
mod spec;
mod supervise;

use std::path::{Path, PathBuf};

pub use net::{Attachment, HostNetwork, NetworkConfig};
pub use rhone_core::Limits;
pub use runtime::{DEFAULT_RUNTIME, Exit, Sandbox, SandboxConfig, Started, describe_exit};
pub use supervise::{Adoption, Supervised};

/// The uid (and gid) tenant code runs as inside its sandbox.
pub const SANDBOX_UID: u32 = 1000;
/// Where a sandbox's writable home is mounted.
pub const HOME: &str = "/home/rhone";
/// `PATH` inside a sandbox.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Why a sandbox could not be made, run or cleaned up. Each variant names the phase.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the OCI runtime {runtime} cannot be used: {problem}")]
    Runtime { runtime: String, problem: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing the runtime spec failed: {0}")]
    Spec(String),
    #[error("setting up the sandbox's network failed: {0}")]
    Network(String),
    #[error("invalid sandbox: {0}")]
    Invalid(String),
}

impl SandboxError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
        let context = context.into();
        move |source| SandboxError::Io { context, source }
    }
}

/// A directory of the host shown inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// An absolute path inside the sandbox.
    pub destination: String,
    pub writable: bool,
}

impl Bind {
    pub fn read_only(source: impl Into<PathBuf>, destination: &str) -> Bind {
        Bind {
            source: source.into(),
            destination: destination.to_owned(),
            writable: false,
        }
    }
    pub fn writable(source: impl Into<PathBuf>, destination: &str) -> Bind {
        Bind {
            source: source.into(),
            destination: destination.to_owned(),
            writable: true,
        }
    }
}

/// The network a sandbox lives in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// A new network namespace with loopback only: no way in or out (builds).
    Isolated,
    /// An existing network namespace (`/run/netns/NAME`), made by [`HostNetwork::attach`].
    Join(PathBuf),
}

/// What to run, where, with what.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Unique among the sandboxes of this [`Sandbox`]: `[a-z0-9-]`, up to 64 characters.
    pub id: String,
    /// `sh -c COMMAND`, as the process's arguments.
    pub command: String,
    /// The process's whole environment (`PATH` and `HOME` are added unless given).
    pub env: Vec<(String, String)>,
    /// The working directory inside the sandbox.
    pub cwd: String,
    pub binds: Vec<Bind>,
    pub limits: Limits,
    pub network: Network,
    pub hostname: String,
    /// Names the sandbox's `/etc/hosts` gives beside its own (it has no DNS): the hosts
    /// of an allocation's egress, as the runner resolved them.
    pub hosts: Vec<(String, std::net::Ipv4Addr)>,
}

/// The host uid that [`SANDBOX_UID`] of sandbox `id` is: each sandbox has its own range of
/// 65,536 ids above 2^20, so its files and processes belong to nobody else on the host.
pub fn host_uid(id: &str) -> u32 {
    uid_base(id) + SANDBOX_UID
}

pub(crate) fn uid_base(id: &str) -> u32 {
    // A stable spread of ids over 60,000 ranges; the remainder fits in a u32.
    let range = u32::try_from(fnv1a(id.as_bytes()) % 60_000).unwrap_or(0);
    (1 << 20) + range * 65_536
}

/// FNV-1a (64 bits): a stable, cheap spread of names, not a security measure.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Gives `path` and everything under it (links themselves, not what they point to) to
/// `uid`, so a sandbox whose process is `uid` can write it.
pub fn chown_tree(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

pub(crate) fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_uids_are_unprivileged_and_stable() {
        let a = host_uid("alloc-1");
        assert_eq!(a, host_uid("alloc-1"));
        assert!(a > 1 << 20, "{a}");
        assert!(uid_base("x").checked_add(65_535).is_some());
        assert_ne!(host_uid("alloc-1"), host_uid("alloc-2"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(valid_id("a-0190"));
        assert!(!valid_id("A"));
        assert!(!valid_id("../x"));
        assert!(!valid_id(""));
    }
}

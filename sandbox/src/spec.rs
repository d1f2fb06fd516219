//! The runtime spec of a sandbox (`config.json` of its OCI bundle), written with `oci-spec`,
//! and the bundle's small root: an empty read-only directory with the mount points, and an
//! `/etc` of its own (passwd, group, hosts), so nothing of the host's `/etc` is shown but
//! the certificates and the `alternatives` links commands resolve through.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{
    LinuxBuilder, LinuxCapabilitiesBuilder, LinuxIdMappingBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder,
    RootBuilder, Spec, SpecBuilder, UserBuilder, get_default_maskedpaths,
    get_default_readonly_paths,
};

use crate::{HOME, Network, PATH, SANDBOX_UID, SandboxError, SandboxSpec, seccomp, uid_base};

/// System directories shown read-only in every sandbox, when the host has them.
const SYSTEM_DIRS: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32"];
/// Parts of the host's `/etc` shown read-only: certificates and command alternatives.
const HOST_ETC: &[&str] = &[
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/localtime",
];
/// The sandbox's first process: a shell that runs the command as its child and waits for
/// it. The first process of a PID namespace ignores signals it has no handler for, so the
/// command must not be it (`exec` in a command would otherwise make SIGTERM a no-op); the
/// runner signals every process of the sandbox, and this shell exits with the command's
/// status (128 + the signal when one ended it). Its stderr joins its stdout inside the
/// sandbox: the runtime copies each stream through a pipe of its own, which would lose the
/// order of lines between them.
const INIT: &str = r#"sh -c "$1" 2>&1 & wait $!"#;
const TMP_OWNER: &str = "uid=1000";
const TMP_GROUP: &str = "gid=1000";
/// Size of the private `/tmp` (it counts against the memory limit as well).
const TMP_SIZE: &str = "size=256m";

/// Writes the bundle of `spec` into `bundle` (`config.json`, `rootfs/`, `etc/`).
/// `cgroups_path` is the container's cgroup, relative to the runtime's own.
pub(crate) fn write_bundle(
    spec: &SandboxSpec,
    bundle: &Path,
    cgroups_path: &str,
) -> Result<(), SandboxError> {
    let rootfs = bundle.join("rootfs");
    let etc = bundle.join("etc");
    for dir in [&rootfs, &etc] {
        std::fs::create_dir_all(dir)
            .map_err(SandboxError::io(format!("creating {}", dir.display())))?;
    }
    let write = |name: &str, text: &str| {
        let path = etc.join(name);
        std::fs::write(&path, text).map_err(SandboxError::io(format!("writing {}", path.display())))
    };
    write(
        "passwd",
        &format!(
            "root:x:0:0:root:/:/usr/sbin/nologin\nrhone:x:{SANDBOX_UID}:{SANDBOX_UID}:rhone:{HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/:/usr/sbin/nologin\n"
        ),
    )?;
    write(
        "group",
        &format!("root:x:0:\nrhone:x:{SANDBOX_UID}:\nnogroup:x:65534:\n"),
    )?;
    let mut hosts = format!(
        "127.0.0.1 localhost {0}\n::1 localhost {0}\n",
        spec.hostname
    );
    for (name, address) in &spec.hosts {
        hosts.push_str(&format!("{address} {name}\n"));
    }
    write("hosts", &hosts)?;
    write("resolv.conf", "")?;
    write(
        "nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
    )?;

    let mut mounts = base_mounts()?;
    let mut points: Vec<String> = ["/proc", "/dev", "/tmp", "/etc", HOME]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    for dir in SYSTEM_DIRS {
        if Path::new(dir).exists() {
            mounts.push(bind(Path::new(dir), dir, false)?);
            points.push((*dir).to_owned());
        }
    }
    mounts.push(bind(&etc, "/etc", false)?);
    for path in HOST_ETC {
        let host = Path::new(path);
        let Ok(meta) = std::fs::metadata(host) else {
            continue;
        };
        // The mount point inside the bundle's own /etc.
        let inside = etc.join(host.strip_prefix("/etc").unwrap_or(host));
        let made = if meta.is_dir() {
            std::fs::create_dir_all(&inside)
        } else {
            std::fs::write(&inside, b"")
        };
        made.map_err(SandboxError::io(format!("creating {}", inside.display())))?;
        mounts.push(bind(host, path, false)?);
    }
    for b in &spec.binds {
        check_destination(&b.destination)?;
        mounts.push(bind(&b.source, &b.destination, b.writable)?);
        points.push(b.destination.clone());
    }
    for point in points {
        let dir = rootfs.join(point.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)
            .map_err(SandboxError::io(format!("creating {}", dir.display())))?;
    }

    let config = runtime_spec(spec, mounts, cgroups_path)?;
    let path = bundle.join("config.json");
    config
        .save(&path)
        .map_err(|e| SandboxError::Spec(format!("{}: {e}", path.display())))
}

fn runtime_spec(
    spec: &SandboxSpec,
    mounts: Vec<Mount>,
    cgroups_path: &str,
) -> Result<Spec, SandboxError> {
    let err = |e: oci_spec::OciSpecError| SandboxError::Spec(e.to_string());
    let mut env: Vec<String> = spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    for (name, value) in [("PATH", PATH), ("HOME", HOME)] {
        if !spec.env.iter().any(|(k, _)| k == name) {
            env.push(format!("{name}={value}"));
        }
    }
    let no_caps = HashSet::new();
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(SANDBOX_UID)
                .gid(SANDBOX_UID)
                .additional_gids(vec![])
                .build()
                .map_err(err)?,
        )
        .args(vec![
            "sh".to_owned(),
            "-c".to_owned(),
            INIT.to_owned(),
            "rhone-init".to_owned(),
            spec.command.clone(),
        ])
        .env(env)
        .cwd(PathBuf::from(&spec.cwd))
        .capabilities(
            LinuxCapabilitiesBuilder::default()
                .bounding(no_caps.clone())
                .effective(no_caps.clone())
                .inheritable(no_caps.clone())
                .permitted(no_caps.clone())
                .ambient(no_caps)
                .build()
                .map_err(err)?,
        )
        .rlimits(vec![
            PosixRlimitBuilder::default()
                .typ(PosixRlimitType::RlimitCore)
                .hard(0u64)
                .soft(0u64)
                .build()
                .map_err(err)?,
        ])
        .no_new_privileges(true)
        .build()
        .map_err(err)?;

    let mut namespaces = Vec::new();
    for typ in [
        LinuxNamespaceType::User,
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
    ] {
        namespaces.push(
            LinuxNamespaceBuilder::default()
                .typ(typ)
                .build()
                .map_err(err)?,
        );
    }
    let net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
    namespaces.push(
        match &spec.network {
            Network::Isolated => net,
            Network::Join(path) => net.path(path.clone()),
        }
        .build()
        .map_err(err)?,
    );
    let base = uid_base(&spec.id);
    let mapping = LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(base)
        .size(65_536u32)
        .build()
        .map_err(err)?;
    let linux = LinuxBuilder::default()
        .uid_mappings(vec![mapping])
        .gid_mappings(vec![mapping])
        .namespaces(namespaces)
        .cgroups_path(PathBuf::from(cgroups_path))
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .seccomp(seccomp::profile()?)
        .build()
        .map_err(err)?;

    SpecBuilder::default()
        .version("1.0.2")
        .hostname(spec.hostname.clone())
        .root(
            RootBuilder::default()
                .path("rootfs")
                .readonly(true)
                .build()
                .map_err(err)?,
        )
        .process(process)
        .mounts(mounts)
        .linux(linux)
        .build()
        .map_err(err)
}

/// `/proc` (of the sandbox's own PID namespace), a small `/dev` and a private `/tmp`.
fn base_mounts() -> Result<Vec<Mount>, SandboxError> {
    let err = |e: oci_spec::OciSpecError| SandboxError::Spec(e.to_string());
    let mount = |dest: &str, typ: &str, source: &str, options: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ(typ)
            .source(source)
            .options(options.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
            .build()
            .map_err(err)
    };
    Ok(vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
            ],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
        // Owned by the sandbox's user: the runtime applies a tmpfs's `uid`, not always its `mode`.
        mount(
            "/tmp",
            "tmpfs",
            "tmpfs",
            &[
                "nosuid",
                "nodev",
                "mode=1777",
                TMP_SIZE,
                TMP_OWNER,
                TMP_GROUP,
            ],
        )?,
    ])
}

fn bind(source: &Path, destination: &str, writable: bool) -> Result<Mount, SandboxError> {
    let mode = if writable { "rw" } else { "ro" };
    MountBuilder::default()
        .destination(destination)
        .typ("bind")
        .source(source)
        .options(
            ["rbind", mode, "nosuid", "nodev"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
        .build()
        .map_err(|e| SandboxError::Spec(e.to_string()))
}

/// A bind's destination: absolute, normal, and not over the sandbox's own mounts.
fn check_destination(dest: &str) -> Result<(), SandboxError> {
    let normal = dest.starts_with('/')
        && dest.len() > 1
        && dest
            .split('/')
            .skip(1)
            .all(|part| !part.is_empty() && part != "." && part != "..");
    let reserved = ["/proc", "/dev", "/etc", "/tmp"]
        .iter()
        .chain(SYSTEM_DIRS)
        .any(|r| dest == *r || dest.starts_with(&format!("{r}/")));
    if normal && !reserved {
        Ok(())
    } else {
        Err(SandboxError::Invalid(format!(
            "cannot bind at {dest:?}: not an absolute normal path outside the system directories"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Bind, Limits};

    fn spec() -> SandboxSpec {
        SandboxSpec {
            id: "t-1".into(),
            command: "true".into(),
            env: vec![("A".into(), "1".into())],
            cwd: "/app".into(),
            binds: vec![Bind::read_only("/nonexistent", "/app")],
            limits: Limits::RUN_DEFAULT,
            network: Network::Isolated,
            hostname: "app".into(),
            hosts: Vec::new(),
        }
    }

    #[test]
    fn the_spec_drops_every_privilege() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        write_bundle(&spec(), dir.path(), "rhone/t-1/c")?;
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json"))?)?;
        let process = &json["process"];
        assert_eq!(process["user"]["uid"], SANDBOX_UID);
        assert_eq!(process["noNewPrivileges"], true);
        for set in [
            "bounding",
            "effective",
            "permitted",
            "inheritable",
            "ambient",
        ] {
            assert_eq!(process["capabilities"][set], serde_json::json!([]), "{set}");
        }
        assert_eq!(json["root"]["readonly"], true);
        let types: Vec<&str> = json["linux"]["namespaces"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["type"].as_str())
            .collect();
        assert_eq!(types, ["user", "pid", "mount", "ipc", "uts", "network"]);
        assert_ne!(json["linux"]["uidMappings"][0]["hostID"], 0);
        assert!(
            json["linux"]["seccomp"]["syscalls"][0]["names"]
                .as_array()
                .is_some_and(|n| n.iter().any(|n| n == "mount"))
        );
        assert!(
            process["env"]
                .as_array()
                .is_some_and(|e| e.iter().any(|v| v == "A=1"))
        );
        assert!(dir.path().join("rootfs/app").is_dir());
        Ok(())
    }

    #[test]
    fn binds_stay_out_of_the_system_directories() {
        for bad in ["/etc", "/usr/x", "relative", "/a/../b", "/"] {
            assert!(check_destination(bad).is_err(), "{bad}");
        }
        assert!(check_destination("/app").is_ok());
    }
}

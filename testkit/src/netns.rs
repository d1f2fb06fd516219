//! A host of its own for a test: a network namespace joined to this machine by a veth pair,
//! on `10.216.K.0/24` (the machine `.1`, the namespace `.2`), `K` free among the tests that
//! run at the same time and used by no interface. Servers that stand for another machine (a
//! database server the platform's allocations reach through their runner's firewall) listen
//! there. The namespace routes only back to this machine, and this machine forwards only
//! what arrives from it (its end's own `forwarding` switch): nothing leaves the machine.
//! Dropping it removes the namespace, the pair with it.

use std::fs::File;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};

/// Where the locks of the `K`s in use are.
const LOCK_DIR: &str = "/run/rhone";

/// A network namespace standing for another host.
#[derive(Debug)]
pub struct Namespace {
    /// Its name (`ip netns`).
    pub name: String,
    /// This machine's address on the pair.
    pub gateway: Ipv4Addr,
    /// The namespace's address.
    pub address: Ipv4Addr,
    _lock: File,
}

/// Runs `ip ARGS`, failing with its stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

impl Namespace {
    /// Makes the namespace on the first free `K`.
    pub fn create() -> Result<Namespace> {
        std::fs::create_dir_all(LOCK_DIR)?;
        let used = String::from_utf8(Command::new("ip").args(["-4", "addr"]).output()?.stdout)?;
        for k in 1..=250u8 {
            if used.contains(&format!("10.216.{k}.")) {
                continue;
            }
            let lock = File::create(format!("{LOCK_DIR}/testhost-{k}.lock"))?;
            if lock.try_lock().is_err() {
                continue;
            }
            let name = format!("rhtest{k}");
            let veth = format!("rhtv{k}");
            // Left by a killed earlier test with this K.
            let _ = ip(&["netns", "del", &name]);
            let _ = ip(&["link", "del", &veth]);
            let gateway = Ipv4Addr::new(10, 216, k, 1);
            let address = Ipv4Addr::new(10, 216, k, 2);
            let ns = Namespace {
                name,
                gateway,
                address,
                _lock: lock,
            };
            ns.make(&veth)?;
            return Ok(ns);
        }
        bail!("no free 10.216.K.0/24 for a test host")
    }

    fn make(&self, veth: &str) -> Result<()> {
        let name = self.name.as_str();
        ip(&["netns", "add", name])?;
        ip(&[
            "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        ip(&["addr", "add", &format!("{}/24", self.gateway), "dev", veth])?;
        ip(&["link", "set", veth, "up"])?;
        for args in [
            vec![
                "addr",
                "add",
                &format!("{}/24", self.address),
                "dev",
                "eth0",
            ],
            vec!["link", "set", "lo", "up"],
            vec!["link", "set", "eth0", "up"],
            vec![
                "route",
                "add",
                "default",
                "via",
                &format!("{}", self.gateway),
            ],
        ] {
            let mut all = vec!["-n", name];
            all.extend(args.iter().copied());
            ip(&all)?;
        }
        // Answers from here to an allocation go on through its runner's bridge.
        std::fs::write(format!("/proc/sys/net/ipv4/conf/{veth}/forwarding"), "1")
            .context("turning forwarding on for the test host's pair")?;
        Ok(())
    }

    /// A TCP listener on `port` of the namespace's address, bound inside it (0: any free).
    pub fn listen(&self, port: u16) -> Result<TcpListener> {
        let path = format!("/run/netns/{}", self.name);
        let address = self.address;
        std::thread::scope(|scope| {
            scope
                .spawn(|| -> Result<TcpListener> {
                    let target = File::open(&path).with_context(|| format!("opening {path}"))?;
                    // This thread alone moves; the socket keeps the namespace it was made in.
                    nix::sched::setns(&target, nix::sched::CloneFlags::CLONE_NEWNET)
                        .context("entering the test host's network namespace")?;
                    TcpListener::bind((address, port))
                        .with_context(|| format!("listening on {address}:{port}"))
                })
                .join()
                .map_err(|_| anyhow::anyhow!("the listening thread panicked"))?
        })
    }

    /// `program args…` to run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

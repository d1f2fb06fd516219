//! The network of a runner's sandboxes: one bridge per runner host with a subnet of its own
//! (the host is its first address), and per allocation a network namespace joined to it by
//! a veth pair, with the next free address. The bridge's ports are isolated from each other
//! (no allocation reaches another), and the host's firewall drops every connection an
//! allocation opens towards the host or through it, so the platform's addresses (DB,
//! Temporal, API, runner API) are out of reach; the edge and the runner open connections to
//! the allocation, whose answers pass. The one way out is an allocation's egress: the
//! addresses and ports of the database and services bound to its environment, each let
//! through for that allocation's address alone by a rule in the bridge's own chain
//! (`<bridge>-out`), removed when the allocation goes. Packets the bridge receives may be
//! forwarded (the bridge's own `forwarding` switch, not the host's): the chain is what
//! decides. IPv6 is off on the bridge and its ports. Builds use [`crate::Network::Isolated`]
//! instead: loopback only.
//!
//! The subnet is configured, or claimed automatically (`10.213.N.0/24`, the first `N` no
//! other runner on the host holds): a runner holds a lock file for its bridge while it
//! lives, so a bridge whose lock is free was left by a runner that died. The next runner
//! keeps it when it is intact (its address and firewall rules in place), with the
//! namespaces of the allocations it adopts ([`HostNetwork::adopt`]); the rest it removes
//! ([`HostNetwork::prune`]). A bridge that is not intact is remade.

use std::collections::BTreeSet;
use std::fs::File;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};

use nix::fcntl::{Flock, FlockArg};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::SandboxError;

/// Where runners keep the lock files of their bridges.
pub const DEFAULT_LOCK_DIR: &str = "/run/rhone/net";
/// The range automatic subnets come from: `10.213.N.0/24`.
pub const AUTO_PREFIX: [u8; 2] = [10, 213];

/// How a runner's network is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// `RHONE_RUNNER_SUBNET`: the runner's subnet (`10.213.7.0/24`); `None` claims the
    /// first free `10.213.N.0/24`.
    pub subnet: Option<(Ipv4Addr, u8)>,
    /// Without `subnet`: the one to try first (what this runner had before it restarted,
    /// where the allocations it adopts are).
    pub preferred: Option<(Ipv4Addr, u8)>,
    pub lock_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            subnet: None,
            preferred: None,
            lock_dir: PathBuf::from(DEFAULT_LOCK_DIR),
        }
    }
}

/// Parses `a.b.c.d/p` (p from 16 to 28), the network address itself
/// ([`rhone_core::fleet::Subnet`]).
pub fn parse_subnet(text: &str) -> Result<(Ipv4Addr, u8), String> {
    text.parse::<rhone_core::fleet::Subnet>()
        .map(|s| (s.network, s.prefix))
}

/// The bridge and the addresses of one runner.
#[derive(Debug)]
pub struct HostNetwork {
    bridge: String,
    network: u32,
    prefix: u8,
    used: Mutex<Addresses>,
    _lock: Flock<File>,
}

/// Host numbers in use, and the last one given: addresses are handed out round the
/// subnet, so a freed one is reused as late as possible.
#[derive(Debug, Default)]
struct Addresses {
    used: BTreeSet<u32>,
    last: u32,
}

/// One allocation's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The network namespace's name (`ip netns`).
    pub netns: String,
    pub address: Ipv4Addr,
}

impl Attachment {
    /// The path a runtime joins.
    pub fn netns_path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.netns)
    }
}

impl HostNetwork {
    /// Claims the configured subnet, or the first free automatic one, and sets up its
    /// bridge and firewall rules.
    pub async fn claim(config: &NetworkConfig) -> Result<HostNetwork, SandboxError> {
        std::fs::create_dir_all(&config.lock_dir).map_err(SandboxError::io(format!(
            "creating {}",
            config.lock_dir.display()
        )))?;
        let candidates: Vec<(Ipv4Addr, u8)> = match config.subnet {
            Some(subnet) => vec![subnet],
            None => config
                .preferred
                .into_iter()
                .chain(
                    (0..=255u8).map(|n| (Ipv4Addr::new(AUTO_PREFIX[0], AUTO_PREFIX[1], n, 0), 24)),
                )
                .collect(),
        };
        for (addr, prefix) in candidates {
            let network = u32::from(addr);
            let bridge = format!("rhbr{network:08x}");
            let path = config.lock_dir.join(format!("{bridge}.lock"));
            let file = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .map_err(SandboxError::io(format!("opening {}", path.display())))?;
            let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => lock,
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => continue,
                Err((_, e)) => {
                    return Err(SandboxError::Network(format!(
                        "locking {}: {e}",
                        path.display()
                    )));
                }
            };
            let net = HostNetwork {
                bridge,
                network,
                prefix,
                used: Mutex::new(Addresses::default()),
                _lock: lock,
            };
            if !net.intact().await {
                net.remove_leftovers().await;
                net.create_bridge().await?;
            }
            return Ok(net);
        }
        Err(SandboxError::Network(match config.subnet {
            Some((a, p)) => format!("subnet {a}/{p} is held by another runner on this host"),
            None => {
                "every automatic subnet 10.213.N.0/24 is held by another runner on this host".into()
            }
        }))
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The host's address on the bridge.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    pub fn subnet(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }

    /// Makes the network namespace of sandbox `id` with the next free address, and lets it
    /// open TCP connections to `egress` (address and port) and nowhere else. With
    /// `low_ports`, its unprivileged process may listen on ports below 1024.
    pub async fn attach(
        &self,
        id: &str,
        low_ports: bool,
        egress: &[(Ipv4Addr, u16)],
    ) -> Result<Attachment, SandboxError> {
        let host = self.take_address()?;
        let address = Ipv4Addr::from(self.network + host);
        let attached = match self.allow(address, egress).await {
            Ok(()) => self.attach_at(id, host, low_ports).await,
            Err(e) => Err(e),
        };
        if attached.is_err() {
            self.forget(address).await;
            self.release(host);
        }
        attached
    }

    /// The bridge's chain of egress rules.
    fn chain(&self) -> String {
        format!("{}-out", self.bridge)
    }

    /// Lets `address` open connections to `egress`, after removing whatever rules an
    /// earlier holder of the address left.
    async fn allow(
        &self,
        address: Ipv4Addr,
        egress: &[(Ipv4Addr, u16)],
    ) -> Result<(), SandboxError> {
        self.forget(address).await;
        let chain = self.chain();
        for (to, port) in egress {
            let rule: Vec<String> = [
                "-s".to_owned(),
                format!("{address}/32"),
                "-d".to_owned(),
                format!("{to}/32"),
                "-p".to_owned(),
                "tcp".to_owned(),
                "--dport".to_owned(),
                port.to_string(),
                "-j".to_owned(),
                "ACCEPT".to_owned(),
            ]
            .into();
            iptables(&["-A", &chain], &rule).await?;
        }
        Ok(())
    }

    /// The egress rules of `address`, as `iptables -S` prints them (without `-A CHAIN`).
    async fn rules_of(&self, address: Ipv4Addr) -> Vec<Vec<String>> {
        let chain = self.chain();
        let Ok(out) = Command::new("iptables")
            .args(["-w", "-S", &chain])
            .stdin(Stdio::null())
            .output()
            .await
        else {
            return Vec::new();
        };
        let source = format!("{address}/32");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
                let is_rule = words.first().is_some_and(|w| w == "-A")
                    && words.windows(2).any(|w| w[0] == "-s" && w[1] == source);
                is_rule.then(|| words[2..].to_vec())
            })
            .collect()
    }

    /// Removes the egress rules of `address`.
    async fn forget(&self, address: Ipv4Addr) {
        let chain = self.chain();
        for rule in self.rules_of(address).await {
            if let Err(e) = iptables(&["-D", &chain], &rule).await {
                tracing::warn!(%address, error = %e, "cannot remove an egress rule");
            }
        }
    }

    /// The network namespace [`HostNetwork::attach`] makes for sandbox `id`, known before
    /// it exists (so a sandbox's spec can be written meanwhile).
    pub fn netns_path(&self, id: &str) -> PathBuf {
        Path::new("/run/netns").join(self.netns_name(id))
    }

    fn netns_name(&self, id: &str) -> String {
        format!("{}-{id}", self.bridge)
    }

    async fn attach_at(
        &self,
        id: &str,
        host: u32,
        low_ports: bool,
    ) -> Result<Attachment, SandboxError> {
        let netns = self.netns_name(id);
        let veth = veth_name(id);
        let address = Ipv4Addr::from(self.network + host);
        // A namespace of the same id left by an earlier attempt goes first.
        if Path::new("/run/netns").join(&netns).exists() {
            let _ = run_ip(&[], &format!("netns del {netns}\n"), true).await;
        }
        run_ip(
            &[],
            &format!(
                "netns add {netns}\n\
                 link add {veth} type veth peer name eth0 netns {netns}\n\
                 link set {veth} master {bridge} up\n\
                 link set dev {veth} type bridge_slave isolated on\n\
                 neigh flush to {address} dev {bridge}\n",
                bridge = self.bridge
            ),
            false,
        )
        .await?;
        disable_ipv6(&veth);
        run_ip(
            &["-n", &netns],
            &format!(
                "addr add {address}/{prefix} dev eth0\n\
                 link set lo up\n\
                 link set eth0 up\n\
                 route add default via {gateway}\n",
                prefix = self.prefix,
                gateway = self.gateway()
            ),
            false,
        )
        .await?;
        if low_ports {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    &netns,
                    "sysctl",
                    "-qw",
                    "net.ipv4.ip_unprivileged_port_start=0",
                ])
                .stdin(Stdio::null())
                .output()
                .await
                .map_err(|e| SandboxError::Network(format!("sysctl in {netns}: {e}")))?;
            if !out.status.success() {
                return Err(SandboxError::Network(format!(
                    "sysctl in {netns}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(Attachment { netns, address })
    }

    /// The namespace an earlier runner made for sandbox `id`, with its address (now taken),
    /// if it is there.
    pub async fn adopt(&self, id: &str) -> Option<Attachment> {
        let netns = self.netns_name(id);
        let address = self.address_in(&netns).await?;
        let host = u32::from(address).wrapping_sub(self.network);
        let mut addresses = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        addresses.used.insert(host);
        addresses.last = addresses.last.max(host);
        Some(Attachment { netns, address })
    }

    /// The address of namespace `netns` on this bridge, if it is there and has one.
    async fn address_in(&self, netns: &str) -> Option<Ipv4Addr> {
        let out = Command::new("ip")
            .args(["-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"])
            .stdin(Stdio::null())
            .output()
            .await
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let address: Ipv4Addr = text
            .split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?
            .split('/')
            .next()?
            .parse()
            .ok()?;
        let host = u32::from(address).wrapping_sub(self.network);
        (out.status.success() && host < 1u32 << (32 - self.prefix)).then_some(address)
    }

    /// Removes the namespaces of this bridge, and their egress rules, but those of `keep`
    /// (adopted sandboxes'): what an earlier runner left.
    pub async fn prune(&self, keep: &[String]) {
        let keep: Vec<String> = keep.iter().map(|id| self.netns_name(id)).collect();
        for name in self.namespaces() {
            if !keep.contains(&name) {
                if let Some(address) = self.address_in(&name).await {
                    self.forget(address).await;
                }
                let _ = run_ip(&[], &format!("netns del {name}\n"), true).await;
            }
        }
    }

    /// The namespaces of this bridge's sandboxes.
    fn namespaces(&self) -> Vec<String> {
        let prefix = format!("{}-", self.bridge);
        std::fs::read_dir("/run/netns")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|name| name.starts_with(&prefix))
            .collect()
    }

    /// Whether the bridge is there with its address and every firewall rule, as an earlier
    /// holder made it.
    async fn intact(&self) -> bool {
        let Ok(out) = Command::new("ip")
            .args(["-4", "-o", "addr", "show", "dev", &self.bridge])
            .stdin(Stdio::null())
            .output()
            .await
        else {
            return false;
        };
        let expected = format!("inet {}/{} ", self.gateway(), self.prefix);
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).contains(&expected) {
            return false;
        }
        for chain in ["INPUT", "FORWARD"] {
            for rule in firewall(&self.bridge, &self.chain()) {
                if iptables(&["-C", chain], &rule).await.is_err() {
                    return false;
                }
            }
        }
        let forwarding = format!("/proc/sys/net/ipv4/conf/{}/forwarding", self.bridge);
        std::fs::read_to_string(forwarding).is_ok_and(|v| v.trim() == "1")
    }

    /// Removes the namespace (and with it the veth pair) and its egress rules, and frees
    /// the address.
    pub async fn detach(&self, attachment: &Attachment) {
        if let Err(e) = run_ip(&[], &format!("netns del {}\n", attachment.netns), false).await {
            tracing::warn!(netns = %attachment.netns, error = %e, "cannot remove a network namespace");
        }
        self.forget(attachment.address).await;
        self.release(u32::from(attachment.address).wrapping_sub(self.network));
    }

    /// Removes the bridge, its namespaces and its firewall rules (the runner is stopping).
    pub async fn teardown(&self) {
        self.remove_leftovers().await;
    }

    fn take_address(&self) -> Result<u32, SandboxError> {
        let size = 1u32 << (32 - self.prefix);
        let mut addresses = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let last = addresses.last.max(1);
        let free = (last + 1..size - 1)
            .chain(2..=last.min(size - 2))
            .find(|h| !addresses.used.contains(h))
            .ok_or_else(|| {
                SandboxError::Network(format!("no free address left in {}", self.subnet()))
            })?;
        addresses.used.insert(free);
        addresses.last = free;
        Ok(free)
    }

    fn release(&self, host: u32) {
        self.used
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .used
            .remove(&host);
    }

    async fn create_bridge(&self) -> Result<(), SandboxError> {
        let br = &self.bridge;
        // A bridge without an address of its own takes its lowest port's, so it would
        // change as allocations join: every allocation that cached the old one would send
        // to nobody until its neighbour entry expired. Its own, stable per subnet, never
        // changes.
        let [a, b, c, d] = self.network.to_be_bytes();
        run_ip(
            &[],
            &format!(
                "link add {br} address 02:72:{a:02x}:{b:02x}:{c:02x}:{d:02x} type bridge\n\
                 addr add {gw}/{prefix} dev {br}\n\
                 link set {br} up\n",
                gw = self.gateway(),
                prefix = self.prefix
            ),
            false,
        )
        .await?;
        disable_ipv6(br);
        // What the bridge receives may be routed on (to a database on another network):
        // the bridge's own switch, so no other interface of the host starts forwarding.
        let forwarding = format!("/proc/sys/net/ipv4/conf/{br}/forwarding");
        std::fs::write(&forwarding, "1").map_err(|e| {
            SandboxError::Network(format!("turning forwarding on ({forwarding}): {e}"))
        })?;
        let own = self.chain();
        if iptables(&["-N", &own], &[]).await.is_err() {
            iptables(&["-F", &own], &[]).await?;
        }
        // Inserted at the top, DROP first so that the ACCEPT of answers ends above it.
        for chain in ["INPUT", "FORWARD"] {
            for rule in firewall(br, &own).iter().rev() {
                iptables(&["-I", chain], rule).await?;
            }
        }
        Ok(())
    }

    /// Whatever an earlier holder of this bridge left: namespaces, rules, the bridge.
    async fn remove_leftovers(&self) {
        self.prune(&[]).await;
        let own = self.chain();
        for chain in ["INPUT", "FORWARD"] {
            for rule in firewall(&self.bridge, &own) {
                while iptables(&["-D", chain], &rule).await.is_ok() {}
            }
        }
        let _ = iptables(&["-F", &own], &[]).await;
        let _ = iptables(&["-X", &own], &[]).await;
        let _ = run_ip(&[], &format!("link del {}\n", self.bridge), true).await;
    }
}

/// The rules of a bridge, first to last: answers to connections the host opened pass;
/// what the bridge's egress chain `chain` accepts passes; anything else an allocation sends
/// to or through the host is dropped.
fn firewall(bridge: &str, chain: &str) -> [Vec<String>; 3] {
    let rule = |parts: &[&str]| parts.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    [
        rule(&[
            "-i",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ]),
        rule(&["-i", bridge, "-j", chain]),
        rule(&["-i", bridge, "-j", "DROP"]),
    ]
}

async fn iptables(action: &[&str], rule: &[String]) -> Result<(), SandboxError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(action)
        .args(rule)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| {
            SandboxError::Network(format!(
                "running iptables: {e} (install it: apt-get install iptables)"
            ))
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SandboxError::Network(format!(
            "iptables {} {}: {}",
            action.join(" "),
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Runs `ip [args] -batch -` with `script` on stdin.
async fn run_ip(args: &[&str], script: &str, quiet: bool) -> Result<(), SandboxError> {
    let mut child = Command::new("ip")
        .args(args)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| SandboxError::Network(format!("running ip: {e} (install iproute2)")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .await
            .map_err(|e| SandboxError::Network(format!("writing to ip: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| SandboxError::Network(format!("waiting for ip: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        let why = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if !quiet {
            tracing::debug!(script, error = %why, "ip failed");
        }
        Err(SandboxError::Network(format!(
            "ip {}: {why}",
            script.lines().next().unwrap_or("")
        )))
    }
}

fn disable_ipv6(interface: &str) {
    let path = format!("/proc/sys/net/ipv6/conf/{interface}/disable_ipv6");
    if Path::new(&path).exists()
        && let Err(e) = std::fs::write(&path, "1")
    {
        tracing::warn!(interface, error = %e, "cannot turn IPv6 off");
    }
}

/// `rh` and the last 12 hex digits of the id: unique enough, and within the 15 bytes an
/// interface name may have.
fn veth_name(id: &str) -> String {
    let hex: String = id.chars().filter(char::is_ascii_hexdigit).collect();
    format!("rh{}", &hex[hex.len().saturating_sub(12)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked() {
        assert_eq!(
            parse_subnet("10.213.7.0/24"),
            Ok((Ipv4Addr::new(10, 213, 7, 0), 24))
        );
        for bad in [
            "10.213.7.1/24",
            "10.213.7.0",
            "10.213.7.0/8",
            "x/24",
            "10.213.7.0/29",
        ] {
            assert!(parse_subnet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn veth_names_fit_an_interface_name() {
        let name = veth_name("0190a0b0-0000-7000-8000-0123456789ab");
        assert_eq!(name, "rh0123456789ab");
        assert!(name.len() <= 15);
    }
}

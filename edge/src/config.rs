//! How one edge names itself and how often it follows the route change log.

use std::{net::SocketAddr, time::Duration};

/// Settings of one edge. [`EdgeConfig::for_address`] gives the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The edge's name in `edge_acks`, unique among the edges on one control DB. Default
    /// `edge-<hostname>-<port>`.
    pub edge_id: String,
    /// Where the edge listens, recorded in `edge_acks.address` for on-call. Default
    /// `http://<listen address>`.
    pub address: Option<String>,
    /// How often the route change log and the allocations are polled. Default 20 ms.
    pub poll_interval: Duration,
    /// How often the edge says it is alive (`edge_acks.seen_at`) when nothing moves. Default
    /// 1 s; promotions stop waiting for an edge not seen for 30 s.
    pub heartbeat: Duration,
    /// How long a gap in the change log may stay open (a writer may still be committing)
    /// before the edge reloads a snapshot. Default 500 ms.
    pub gap_grace: Duration,
    /// Threads serving requests, each with its own runtime, accept loop and connection
    /// pools. Default [`crate::default_workers`]: `RHONE_EDGE_WORKERS`, else one per core.
    pub workers: usize,
}

impl EdgeConfig {
    pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(20);
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(1);
    pub const DEFAULT_GAP_GRACE: Duration = Duration::from_millis(500);

    /// The defaults for an edge listening on `listen`.
    pub fn for_address(listen: SocketAddr) -> Self {
        Self {
            edge_id: default_edge_id(listen.port()),
            address: Some(format!("http://{listen}")),
            poll_interval: Self::DEFAULT_POLL_INTERVAL,
            heartbeat: Self::DEFAULT_HEARTBEAT,
            gap_grace: Self::DEFAULT_GAP_GRACE,
            workers: crate::default_workers(),
        }
    }
}

/// `edge-<hostname>-<port>`; `edge-localhost-<port>` when the host name cannot be read.
pub fn default_edge_id(port: u16) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("edge-{host}-{port}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_name_the_host_and_port() {
        let c = EdgeConfig::for_address("127.0.0.1:8081".parse().expect("addr"));
        assert!(c.edge_id.starts_with("edge-"), "{}", c.edge_id);
        assert!(c.edge_id.ends_with("-8081"), "{}", c.edge_id);
        assert_eq!(c.address.as_deref(), Some("http://127.0.0.1:8081"));
        assert_eq!(c.poll_interval, Duration::from_millis(20));
        assert_eq!(c.heartbeat, Duration::from_secs(1));
        assert_eq!(c.gap_grace, Duration::from_millis(500));
        assert!(c.workers >= 1);
    }
}

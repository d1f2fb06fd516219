//! The escape suite for apps: an allocation of a hostile app tries to get out of its
//! sandbox, each way in a test of its own, through the real runner and the real runtime.
//! The app (`ATTACK_PY`) answers `GET /attack?kind=…` with what it managed to do; every
//! attempt must fail, and the other allocation on the runner keeps serving through the
//! memory hog and the fork bomb.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rhone_store::archive;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use uuid::Uuid;

use crate::support::{Harness, log_text, sandbox_processes};

const WITHIN: Duration = Duration::from_secs(6);

/// The hostile app: each `kind` of attack, its result as JSON `{ok, detail}`.
const ATTACK_PY: &str = r#"
import json, os, socket, sys, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

def attack(kind, q):
    if kind == "read":
        with open(q["path"], "rb") as f:
            return f.read(200).decode("utf-8", "replace")
    if kind == "write":
        with open(q["path"], "w") as f:
            f.write("pwned")
        return "written"
    if kind == "listdir":
        return sorted(os.listdir(q["path"]))
    if kind == "connect":
        s = socket.create_connection((q["host"], int(q["port"])), timeout=1.0)
        s.close()
        return "connected"
    if kind == "memory":
        hog = []
        for _ in range(int(q["mb"])):
            hog.append(bytearray(1 << 20))
        return f"allocated {len(hog)} MiB"
    if kind == "forkbomb":
        children = 0
        try:
            while children < 100000:
                pid = os.fork()
                if pid == 0:
                    time.sleep(30)
                    os._exit(0)
                children += 1
        except OSError as e:
            print(f"fork failed after {children} children: {e}", flush=True)
            raise OSError(f"fork failed after {children} children: {e}")
        return f"forked {children}"
    raise ValueError(kind)

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        if url.path == "/healthz":
            return self.reply(200, {"ok": True})
        if url.path == "/attack":
            q = dict(urllib.parse.parse_qsl(url.query))
            try:
                return self.reply(200, {"ok": True, "detail": attack(q["kind"], q)})
            except Exception as e:
                return self.reply(200, {"ok": False, "detail": f"{type(e).__name__}: {e}"})
        self.reply(404, {})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

# The app writes a file of its own, which the other tenant must not see.
with open(os.path.join(os.environ["HOME"], "tenant-secret"), "w") as f:
    f.write("secret of " + os.environ["RHONE_ALLOCATION_ID"])
ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
"#;

/// A runner listening on every address of the host, with the hostile app in its store and
/// files that stand for the platform's own (an admin token, the control DB) beside it.
struct Scene {
    h: Harness,
    attacker: String,
    token_path: String,
    db_path: String,
}

impl Scene {
    async fn start() -> Result<Scene> {
        let dir = Harness::dir()?;
        let token_path = dir.path().join("admin-token");
        std::fs::write(&token_path, "rhone_admin_0123456789")?;
        let db_path = dir.path().join("rhone.db");
        std::fs::write(&db_path, "SQLite format 3\0 control DB")?;
        let app = dir.path().join("attacker");
        std::fs::create_dir_all(&app)?;
        std::fs::write(app.join("attack.py"), ATTACK_PY)?;
        let h = Harness::start_on("0.0.0.0:0", dir, |_| {}).await?;
        let digest = h.store.put(&archive::pack_dir(&app)?).await?;
        Ok(Scene {
            h,
            attacker: digest.to_string(),
            token_path: token_path.display().to_string(),
            db_path: db_path.display().to_string(),
        })
    }

    /// Starts the hostile app with `limits` and waits until it is ready; its address.
    async fn attacker(&self, limits: Value) -> Result<(Uuid, String)> {
        self.attacker_with(limits, &[]).await
    }

    /// [`Scene::attacker`] let through to `egress` (`host:port`).
    async fn attacker_with(&self, limits: Value, egress: &[String]) -> Result<(Uuid, String)> {
        let id = Uuid::now_v7();
        let spec = json!({
            "allocation_id": id,
            "generation": 1,
            "artifact_digest": self.attacker,
            "process": {
                "command": "exec python3 attack.py",
                "health_path": "/healthz",
                "readiness_timeout_ms": 5000,
                "limits": limits,
            },
            "egress": egress,
        });
        let (code, body) = self.h.put(id, &spec).await?;
        if code != 201 {
            bail!("PUT attacker: {code} {body}");
        }
        let ready = self.h.wait_stage(id, "ready", WITHIN).await?;
        let address = ready["address"].as_str().context("address")?.to_owned();
        Ok((id, address))
    }

    /// A well-behaved tenant on the same runner; its address.
    async fn bystander(&self) -> Result<(Uuid, String)> {
        let id = Uuid::now_v7();
        self.h.put(id, &self.h.spec(id, 1, "serve")?).await?;
        let ready = self.h.wait_stage(id, "ready", WITHIN).await?;
        Ok((id, ready["address"].as_str().context("address")?.to_owned()))
    }

    async fn attack(&self, address: &str, query: &[(&str, &str)]) -> Result<Value> {
        let response = self
            .h
            .http
            .get(format!("{address}/attack"))
            .query(query)
            .timeout(Duration::from_secs(10))
            .send()
            .await?;
        Ok(response.json().await?)
    }

    /// Runs an attack that must fail; its detail.
    async fn refused(&self, address: &str, query: &[(&str, &str)]) -> Result<String> {
        let got = self.attack(address, query).await?;
        assert_eq!(got["ok"], false, "the attack {query:?} succeeded: {got}");
        Ok(got["detail"].as_str().unwrap_or("").to_owned())
    }
}

fn limits(memory_mb: u32, max_pids: u32) -> Value {
    json!({ "memory_mb": memory_mb, "cpu_millis": 1000, "max_pids": max_pids })
}

fn default_limits() -> Value {
    limits(256, 64)
}

/// The host's own IPv4 addresses and the runner's address on the bridge (the gateway of
/// `address`).
fn host_addresses(address: &str) -> Result<Vec<Ipv4Addr>> {
    let ip: Ipv4Addr = address
        .trim_start_matches("http://")
        .split(':')
        .next()
        .context("address")?
        .parse()?;
    let [a, b, c, _] = ip.octets();
    let mut all = vec![Ipv4Addr::new(a, b, c, 1), Ipv4Addr::LOCALHOST];
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()?;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(cidr) = line.split_whitespace().skip_while(|w| *w != "inet").nth(1)
            && let Some(Ok(addr)) = cidr.split('/').next().map(str::parse::<Ipv4Addr>)
            && !all.contains(&addr)
        {
            all.push(addr);
        }
    }
    Ok(all)
}

async fn cannot_reach(scene: &Scene, address: &str, port: u16, what: &str) -> Result<()> {
    for host in host_addresses(address)? {
        let port = port.to_string();
        let host = host.to_string();
        let detail = scene
            .refused(
                address,
                &[("kind", "connect"), ("host", &host), ("port", &port)],
            )
            .await
            .with_context(|| format!("{what} at {host}:{port}"))?;
        assert!(
            detail.contains("timed out")
                || detail.contains("refused")
                || detail.contains("unreachable"),
            "{what} at {host}:{port}: {detail}"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_read_the_admin_token() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    let detail = s
        .refused(&address, &[("kind", "read"), ("path", &s.token_path)])
        .await?;
    assert!(detail.contains("No such file"), "{detail}");
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_read_the_control_db() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    s.refused(&address, &[("kind", "read"), ("path", &s.db_path)])
        .await?;
    let work = s.h.work.display().to_string();
    s.refused(&address, &[("kind", "listdir"), ("path", &work)])
        .await?;
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_sees_only_its_own_processes() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    let me = std::process::id().to_string();
    s.refused(
        &address,
        &[("kind", "read"), ("path", &format!("/proc/{me}/environ"))],
    )
    .await?;
    let init = s
        .attack(&address, &[("kind", "read"), ("path", "/proc/1/cmdline")])
        .await?;
    assert!(
        init["detail"]
            .as_str()
            .is_some_and(|c| c.starts_with("sh\u{0}-c")),
        "PID 1 is the sandbox's own first process: {init}"
    );
    let pids = s
        .attack(&address, &[("kind", "listdir"), ("path", "/proc")])
        .await?;
    let count = pids["detail"]
        .as_array()
        .map(|d| {
            d.iter()
                .filter(|e| e.as_str().is_some_and(|n| n.parse::<u32>().is_ok()))
                .count()
        })
        .unwrap_or(usize::MAX);
    assert!(
        count <= 4,
        "only the sandbox's processes are in /proc: {pids}"
    );
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_read_another_allocations_files() -> Result<()> {
    let s = Scene::start().await?;
    let (victim, _) = s.attacker(default_limits()).await?;
    let (_, address) = s.attacker(default_limits()).await?;
    let theirs =
        s.h.work
            .join("allocations")
            .join(victim.to_string())
            .join("home/tenant-secret");
    assert!(theirs.exists(), "the victim wrote its file");
    let path = theirs.display().to_string();
    s.refused(&address, &[("kind", "read"), ("path", &path)])
        .await?;
    let artifacts = s.h.work.join("artifacts").display().to_string();
    s.refused(&address, &[("kind", "listdir"), ("path", &artifacts)])
        .await?;
    // Its own file is there: the attempt above failed for the right reason.
    let own = s
        .attack(
            &address,
            &[("kind", "read"), ("path", "/home/rhone/tenant-secret")],
        )
        .await?;
    assert_eq!(own["ok"], true, "{own}");
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_write_outside_its_home() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    for path in [
        "/app/attack.py",
        "/app/new",
        "/usr/pwned",
        "/etc/passwd",
        "/pwned",
    ] {
        let detail = s
            .refused(&address, &[("kind", "write"), ("path", path)])
            .await?;
        assert!(
            detail.contains("Read-only file system") || detail.contains("Permission denied"),
            "{path}: {detail}"
        );
    }
    let artifact = s.h.work.join("artifacts");
    let unchanged = std::fs::read_dir(&artifact)?.flatten().all(|d| {
        std::fs::read_to_string(d.path().join("attack.py")).map_or(true, |t| t == ATTACK_PY)
    });
    assert!(unchanged, "the unpacked artifact is unchanged");
    for path in ["/home/rhone/ok", "/tmp/ok"] {
        let ok = s
            .attack(&address, &[("kind", "write"), ("path", path)])
            .await?;
        assert_eq!(ok["ok"], true, "{path} is writable: {ok}");
    }
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_connect_to_temporal() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    // The suite's Temporal when it runs under scripts/test.sh; a listener of its own on
    // every address otherwise, standing where Temporal would.
    let stand_in = TcpListener::bind("0.0.0.0:0").await?;
    let port = match std::env::var("RHONE_TEST_TEMPORAL_ADDRESS") {
        Ok(addr) => addr.rsplit(':').next().context("port")?.parse()?,
        Err(_) => stand_in.local_addr()?.port(),
    };
    cannot_reach(&s, &address, port, "Temporal").await?;
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_reach_the_api_report_endpoint() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    // Where the API's `/internal/runner/reports` listens: every address of the host.
    let api = TcpListener::bind("0.0.0.0:0").await?;
    cannot_reach(&s, &address, api.local_addr()?.port(), "the API").await?;
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_reach_the_runner_api() -> Result<()> {
    let s = Scene::start().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    let port: u16 = s.h.url.rsplit(':').next().context("port")?.parse()?;
    // The runner listens on every address of the host here, and answers the test.
    let from_host = s.h.http.get(format!("{}/healthz", s.h.url)).send().await?;
    assert!(from_host.status().is_success());
    cannot_reach(&s, &address, port, "the runner API").await?;
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_cannot_reach_another_tenants_allocation() -> Result<()> {
    let s = Scene::start().await?;
    let (_, victim) = s.bystander().await?;
    let (_, address) = s.attacker(default_limits()).await?;
    let host = victim
        .trim_start_matches("http://")
        .split(':')
        .next()
        .context("host")?;
    let detail = s
        .refused(
            &address,
            &[("kind", "connect"), ("host", host), ("port", "8080")],
        )
        .await?;
    assert!(
        detail.contains("timed out") || detail.contains("unreachable"),
        "{detail}"
    );
    // The runner (standing for the edge) reaches both.
    assert!(
        s.h.http
            .get(format!("{victim}/healthz"))
            .send()
            .await?
            .status()
            .is_success()
    );
    assert!(
        s.h.http
            .get(format!("{address}/healthz"))
            .send()
            .await?
            .status()
            .is_success()
    );
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_over_its_memory_limit_fails_with_out_of_memory() -> Result<()> {
    let s = Scene::start().await?;
    let (_, bystander) = s.bystander().await?;
    let (id, address) = s.attacker(limits(64, 64)).await?;
    // The hog's connection dies with it.
    let _ = s
        .attack(&address, &[("kind", "memory"), ("mb", "512")])
        .await;
    let failed = s.h.wait_stage(id, "failed", WITHIN).await?;
    let message = failed["message"].as_str().unwrap_or("");
    assert!(
        message.starts_with("out of memory (limit 64 MiB)"),
        "{failed:#}"
    );
    assert!(sandbox_processes(id).is_empty(), "{failed:#}");
    let other = s.h.http.get(format!("{bystander}/healthz")).send().await?;
    assert!(other.status().is_success(), "the other tenant still serves");
    s.h.shutdown().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_stops_at_the_pids_limit() -> Result<()> {
    let s = Scene::start().await?;
    let (_, bystander) = s.bystander().await?;
    let (id, address) = s.attacker(limits(256, 32)).await?;
    let bomb = s.refused(&address, &[("kind", "forkbomb")]).await?;
    assert!(bomb.contains("Resource temporarily unavailable"), "{bomb}");
    let count = sandbox_processes(id).len();
    assert!(count <= 32, "{count} processes in the sandbox");
    // While the bomb's children live, the other tenant and the runner answer.
    let other = s.h.http.get(format!("{bystander}/healthz")).send().await?;
    assert!(other.status().is_success(), "the other tenant still serves");
    let status = s.h.get(id).await?.1;
    assert!(
        log_text(&status).contains("fork failed after"),
        "{status:#}"
    );
    s.h.shutdown().await
}

/// The rules of the runner's egress chain that name `address` as their source.
fn egress_rules(address: &str) -> Result<Vec<String>> {
    let ip = address
        .trim_start_matches("http://")
        .split(':')
        .next()
        .context("address")?;
    let out = std::process::Command::new("iptables").arg("-S").output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("-out ") && l.contains(&format!("-s {ip}/32")))
        .map(str::to_owned)
        .collect())
}

/// An allocation whose egress names a database server's address and port (a host of its
/// own, a network namespace the test made) connects to it there, and to nothing else: not
/// another port of that host, not the runner's host; an allocation without that egress
/// cannot reach it either; and the rule goes with the allocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_reaches_its_egress_and_nothing_else() -> Result<()> {
    let s = Scene::start().await?;
    let db_host = rhone_testkit::netns::Namespace::create()?;
    let allowed = db_host.listen(0)?;
    let other = db_host.listen(0)?;
    let (allowed_port, other_port) = (
        allowed.local_addr()?.port().to_string(),
        other.local_addr()?.port().to_string(),
    );
    let db = db_host.address.to_string();
    let (id, address) = s
        .attacker_with(default_limits(), &[format!("{db}:{allowed_port}")])
        .await?;
    let reached = s
        .attack(
            &address,
            &[("kind", "connect"), ("host", &db), ("port", &allowed_port)],
        )
        .await?;
    assert_eq!(reached["ok"], true, "its egress is open: {reached}");
    let detail = s
        .refused(
            &address,
            &[("kind", "connect"), ("host", &db), ("port", &other_port)],
        )
        .await?;
    assert!(detail.contains("timed out"), "{detail}");
    // The host stays out of reach, egress or not.
    let api = TcpListener::bind("0.0.0.0:0").await?;
    cannot_reach(&s, &address, api.local_addr()?.port(), "the API").await?;
    let (_, neighbour) = s.attacker(default_limits()).await?;
    let detail = s
        .refused(
            &neighbour,
            &[("kind", "connect"), ("host", &db), ("port", &allowed_port)],
        )
        .await?;
    assert!(detail.contains("timed out"), "{detail}");

    assert_eq!(egress_rules(&address)?.len(), 1, "one rule while it runs");
    let (code, body) = s.h.delete(id).await?;
    assert!(code < 300, "{code} {body}");
    s.h.wait_stage(id, "stopped", WITHIN).await?;
    crate::support::eventually(WITHIN, "its egress rule is removed", || {
        egress_rules(&address).is_ok_and(|r| r.is_empty())
    })
    .await?;
    s.h.shutdown().await
}

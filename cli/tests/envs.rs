//! `rhone envs` settings against the real `rhone dev`: scale to zero on, a runtime service
//! bound, both shown by `envs list` and `envs show`; a refused binding names the field and
//! repeats no secret; an unreachable one shows why. No deploy: nothing here needs an
//! artifact.

mod support;

use anyhow::{Context, Result};
use serde_json::{Value, json};
use support::{free_ports, start_dev};

const ENV: [&str; 6] = ["-w", "acme", "-p", "shop", "-a", "web"];

fn args<'a>(head: &[&'a str], tail: &[&'a str]) -> Vec<&'a str> {
    let mut v = head.to_vec();
    v.extend_from_slice(&ENV);
    v.extend_from_slice(tail);
    v
}

#[test]
fn envs_scale_to_zero_and_bind_show_in_the_listing() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let dev = start_dev(dir.path(), &free_ports()?)?;
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "web"])?;
    dev.ok(&args(
        &["envs", "create"],
        &["staging", "--kind", "staging"],
    ))?;

    let on = dev.ok(&args(
        &["envs", "scale-to-zero"],
        &["staging", "--on", "--sleep-after-ms", "60000"],
    ))?;
    assert!(
        on.contains("scale to zero on for staging: sleeps after 60000 ms"),
        "{on}"
    );
    let bound = dev.ok(&args(&["envs", "bind"], &["staging", "idempotency"]))?;
    assert!(
        bound.contains("bound idempotency to staging: ready {\"provider\":\"rhone\"}"),
        "{bound}"
    );

    let list = dev.ok(&args(&["envs", "list"], &[]))?;
    let row = list
        .lines()
        .find(|l| l.starts_with("staging"))
        .with_context(|| format!("no staging row: {list}"))?;
    for expected in ["true", "hot", "60000", "idempotency"] {
        assert!(row.contains(expected), "{row:?} lacks {expected:?}");
    }
    let listed: Value = serde_json::from_str(&dev.ok(&args(&["--json", "envs", "list"], &[]))?)?;
    let env = &listed[0];
    assert_eq!(
        (&env["scaleToZero"], &env["sleepAfterMs"], &env["wakeState"]),
        (&json!(true), &json!(60000), &json!("hot"))
    );
    assert_eq!(
        env["runtimeServices"][0]["service"], "IDEMPOTENCY",
        "{listed}"
    );
    assert_eq!(env["runtimeServices"][0]["status"], "ready");
    let show = dev.ok(&args(&["envs", "show"], &["staging"]))?;
    assert!(show.contains("scale to zero  on"), "{show}");
    assert!(show.contains("idempotency"), "{show}");

    // Refused: the field is named, the password is not repeated, the CLI exits non-zero.
    let refused = dev.rhone(&args(
        &["envs", "bind"],
        &[
            "staging",
            "session-store",
            "--config",
            r#"{"provider":"redis","url":"redis://default:hunter2-pw@cache:6379"}"#,
        ],
    ))?;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("INVALID_ARGUMENT") && stderr.contains("config.url"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    let missing = dev.rhone(&args(
        &["envs", "bind"],
        &[
            "staging",
            "session_store",
            "--config",
            r#"{"provider":"redis"}"#,
        ],
    ))?;
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(stderr.contains("invalid config.url"), "{stderr}");
    let unknown = dev.rhone(&args(&["envs", "bind"], &["staging", "sessions"]))?;
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("unknown runtime service \"sessions\""),
        "{unknown:?}"
    );

    // A binding whose probe fails is kept `unreachable`; `envs show` says why.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = format!(r#"{{"provider":"redis","url":"redis://127.0.0.1:{closed}"}}"#);
    let bound = dev.ok(&args(
        &["envs", "bind"],
        &["staging", "session_store", "--config", &config],
    ))?;
    assert!(bound.contains("unreachable"), "{bound}");
    let show = dev.ok(&args(&["envs", "show"], &["staging"]))?;
    assert!(
        show.contains(&format!(
            "redis at redis://127.0.0.1:{closed}: cannot connect"
        )),
        "{show}"
    );

    let unbound = dev.ok(&args(&["envs", "unbind"], &["staging", "idempotency"]))?;
    assert!(
        unbound.contains("unbound idempotency from staging"),
        "{unbound}"
    );
    let list = dev.ok(&args(&["envs", "list"], &[]))?;
    assert!(!list.contains("idempotency"), "{list}");
    Ok(())
}

//! `docker-compose.yml` describes the roles the binary really has, configured the way their
//! parsers take: every service that runs `rhone serve ROLE` is built from the repository's
//! Dockerfile, and its environment (anchors and merges applied, `${VAR}` substituted, its
//! secrets where compose mounts them) passes `rhone serve ROLE --check`. No Docker engine
//! is needed: the file is read as compose reads it, and the real binary checks it.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde_yaml_ng::Value;
use support::RHONE;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The compose file with its anchors and merge keys applied.
fn compose() -> Result<Value> {
    let text = std::fs::read_to_string(root().join("docker-compose.yml"))?;
    let mut value: Value = serde_yaml_ng::from_str(&text)?;
    value.apply_merge()?;
    Ok(value)
}

/// `${NAME}` replaced from `vars` (compose's interpolation), `$$` left as one `$`.
fn interpolate(value: &str, vars: &BTreeMap<&str, &str>) -> Result<String> {
    let mut out = String::new();
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix('{') {
            let end = after.find('}').context("an unclosed ${")?;
            let name = &after[..end];
            out.push_str(
                vars.get(name)
                    .with_context(|| format!("${{{name}}} is not set"))?,
            );
            rest = &after[end + 1..];
        } else {
            bail!("a bare $ in {value:?}");
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// A service's name, its role and its environment.
type Service = (String, String, BTreeMap<String, String>);

/// Each service running `rhone serve ROLE`: its name, role and environment as compose
/// would give it, with `/run/secrets/NAME` pointing at a file of `secrets`.
fn rhone_services(
    compose: &Value,
    secrets: &Path,
    vars: &BTreeMap<&str, &str>,
) -> Result<Vec<Service>> {
    let services = compose["services"]
        .as_mapping()
        .context("a services mapping")?;
    let mut out = Vec::new();
    for (name, service) in services {
        let name = name.as_str().context("a service name")?.to_owned();
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .map(|c| c.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let ["rhone", "serve", role] = command[..] else {
            ensure!(
                service["image"].as_str().is_some(),
                "service {name} names no image"
            );
            continue;
        };
        ensure!(
            service["image"].as_str() == Some("rhone:latest")
                && service["build"].as_str() == Some("."),
            "service {name} runs rhone but is not the image the Dockerfile builds: {service:?}"
        );
        let declared: Vec<&str> = service["secrets"]
            .as_sequence()
            .map(|s| s.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut env = BTreeMap::new();
        for (key, value) in service["environment"]
            .as_mapping()
            .with_context(|| format!("service {name}: an environment mapping"))?
        {
            let key = key.as_str().context("a variable name")?.to_owned();
            let value = match value {
                Value::String(s) => interpolate(s, vars)?,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => bail!("service {name}: {key} is {other:?}"),
            };
            let value = match value.strip_prefix("/run/secrets/") {
                Some(secret) => {
                    ensure!(
                        declared.contains(&secret),
                        "service {name}: {key} reads secret {secret}, which it does not mount"
                    );
                    ensure!(
                        compose["secrets"][secret]["file"].as_str().is_some(),
                        "secret {secret} is not declared at the top level"
                    );
                    secrets.join(secret).display().to_string()
                }
                None => value,
            };
            env.insert(key, value);
        }
        out.push((name, role.to_owned(), env));
    }
    Ok(out)
}

/// `rhone serve ROLE --check` with exactly `env`.
fn check(role: &str, env: &BTreeMap<String, String>) -> Result<std::process::Output> {
    Ok(Command::new(RHONE)
        .args(["serve", role, "--check"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .output()?)
}

#[test]
fn every_rhone_service_of_the_compose_file_passes_its_roles_config_check() -> Result<()> {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("rhone-runner-key"),
        "compose-test-runner-key-0123456789abcdef\n",
    )?;
    std::fs::write(dir.path().join("s3-secret-key"), "compose-test-s3-secret\n")?;
    let vars = BTreeMap::from([("RHONE_RUNNER_1_CREDENTIAL", "rhr_compose_test_credential")]);
    let compose = compose()?;
    let services = rhone_services(&compose, dir.path(), &vars)?;
    let mut roles: Vec<&str> = services.iter().map(|(_, r, _)| r.as_str()).collect();
    roles.sort_unstable();
    assert_eq!(
        roles,
        ["api", "edge", "runner", "worker"],
        "every role, once"
    );

    for (name, role, env) in &services {
        let out = check(role, env)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "service {name} (rhone serve {role}) fails its check:\n{}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("the configuration is valid"), "{stdout}");
        if role != "api" {
            assert!(
                stdout.contains("artifact store S3 bucket rhone-artifacts at http://minio:9000"),
                "service {name} shares the S3 artifact store: {stdout}"
            );
        }
        assert!(
            !stdout.contains("compose-test-s3-secret"),
            "no secret printed: {stdout}"
        );
    }

    // The check is a real one: a bad value fails it, named.
    let (_, role, env) = services
        .iter()
        .find(|(_, role, _)| role == "runner")
        .context("the runner")?;
    let mut broken = env.clone();
    broken.insert("RHONE_RUNNER_SUBNET".into(), "10.213.1.7/24".into());
    broken.remove("RHONE_S3_BUCKET");
    let out = check(role, &broken)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a broken runner config passed");
    assert!(
        stderr.contains("RHONE_RUNNER_SUBNET") && stderr.contains("RHONE_S3_BUCKET"),
        "every problem named: {stderr}"
    );
    Ok(())
}

#[test]
fn the_dockerfile_installs_the_binary_the_services_run() -> Result<()> {
    let text = std::fs::read_to_string(root().join("Dockerfile"))?;
    let stages: Vec<&str> = text.lines().filter(|l| l.starts_with("FROM ")).collect();
    assert_eq!(
        stages.len(),
        2,
        "a build stage and a runtime stage: {stages:?}"
    );
    assert!(
        text.contains("cargo build --release --locked -p rhone-cli"),
        "builds the rhone binary"
    );
    assert!(
        text.contains("COPY --from=build /usr/local/bin/rhone /usr/local/bin/rhone"),
        "`rhone` on the runtime image's PATH, as the services' commands name it"
    );
    for tool in ["crun", "iproute2", "iptables", "git"] {
        assert!(text.contains(tool), "the runtime image has {tool}");
    }
    Ok(())
}

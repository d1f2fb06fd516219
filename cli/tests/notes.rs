//! The notes example (`examples/notes`, an app on PostgreSQL) taken to production with
//! `rhone dev` and the CLI, as its README walks through: a PostgreSQL server on a host of
//! its own (a network namespace the test makes, reached by allocations only through the
//! egress of their environment's binding) registered with `rhone providers add`, preview
//! and production bound to it with `rhone databases bind`, a secret set, then three commits:
//! the table (expand), a column (expand) and a dropped column (contract). The rows written
//! before a release are served after it; the app shows the hash of its secret; the contract
//! migration runs once the release serves, after its approval; a rollback past it is
//! refused. Neither the secret nor the server's password appears in anything the CLI or
//! `rhone dev` printed.

mod support;

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use support::{Dev, RHONE, http_get, start_dev};

const APP: [&str; 6] = ["-w", "acme", "-p", "shop", "-a", "notes"];
const NOTES_KEY: &str = "nk_live_7d1f0c2b9e8a4f6d";

/// `rhone ARGS` with `input` on stdin; its stdout, failing with stderr.
fn with_stdin(dev: &Dev, args: &[&str], input: &str) -> Result<String> {
    let mut child = Command::new(RHONE)
        .args(args)
        .env("RHONE_CONFIG", &dev.config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "rhone {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// The example copied to `dir/notes` holding only the migrations `upto` (0001, 0002 …)
/// and their down files, committed: the repository as it is at that step.
fn commit_step(dir: &Path, upto: u32) -> Result<PathBuf> {
    let repo = dir.join("notes");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/notes");
    if !repo.exists() {
        ensure!(
            Command::new("cp")
                .arg("-r")
                .arg(&src)
                .arg(&repo)
                .status()?
                .success()
        );
        ensure!(
            Command::new("git")
                .args(["init", "-q"])
                .current_dir(&repo)
                .status()?
                .success()
        );
    }
    let migrations = repo.join("migrations");
    std::fs::remove_dir_all(&migrations)?;
    std::fs::create_dir_all(&migrations)?;
    for entry in std::fs::read_dir(src.join("migrations"))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let number: u32 = name.get(..4).and_then(|n| n.parse().ok()).unwrap_or(0);
        if number <= upto {
            std::fs::copy(entry.path(), migrations.join(&name))?;
        }
    }
    support::commit_all(&repo, &format!("migrations up to {upto:04}"))?;
    Ok(repo)
}

fn json(text: &str) -> Result<Value> {
    serde_json::from_str(text).with_context(|| format!("not JSON: {text}"))
}

/// Polls operation `id` until `done` holds of it.
fn wait_op(dev: &Dev, id: &str, within: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let op = json(&dev.ok(&["--json", "ops", "show", id])?)?;
        if done(&op) {
            return Ok(op);
        }
        ensure!(
            Instant::now() < deadline,
            "operation {id} did not get there: {op}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn ended(op: &Value) -> bool {
    matches!(
        op["status"].as_str(),
        Some("SUCCEEDED" | "FAILED" | "ABORTED")
    )
}

/// The waiting Migration started by operation `parent`.
fn waiting_migration(dev: &Dev, parent: &str, within: Duration) -> Result<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = json(&dev.ok(&["--json", "ops", "list", "--kind", "migration"])?)?;
        let mut seen = Vec::new();
        for m in list.as_array().into_iter().flatten() {
            let id = m["id"].as_str().unwrap_or_default();
            let op = json(&dev.ok(&["--json", "ops", "show", id])?)?;
            if op["stages"][0]["evidence"]["started_by"] == parent && op["status"] == "WAITING" {
                return Ok(op);
            }
            seen.push(op);
        }
        if Instant::now() > deadline {
            let parent_op = dev.ok(&["--json", "ops", "show", parent])?;
            bail!("no migration of {parent} waits: {parent_op}\nmigrations: {seen:#?}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Deploys `repo` to preview; the deploy operation as it ended (or waits).
fn deploy(dev: &Dev, repo: &Path) -> Result<Value> {
    let out = dev.rhone(
        &[
            &["--json", "deploy", &repo.display().to_string()][..],
            &APP,
            &["--env", "preview"],
        ]
        .concat(),
    )?;
    json(&String::from_utf8_lossy(&out.stdout))
}

/// The evidence value `key` of the last stage record that has it.
fn evidence<'a>(op: &'a Value, key: &str) -> Option<&'a Value> {
    op["stages"]
        .as_array()?
        .iter()
        .rev()
        .map(|s| &s["evidence"][key])
        .find(|v| !v.is_null())
}

fn promote(dev: &Dev, deployment: &str) -> Result<std::process::Output> {
    dev.rhone(&[&["promote", deployment][..], &APP, &["--env", "production"]].concat())
}

/// POSTs `body` (JSON) to `path` of `host` through the edge; (status, answer).
fn post(edge_port: u16, host: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "-H"])
        .arg(format!("Host: {host}"))
        .args(["-H", "Content-Type: application/json", "--data", body])
        .arg(format!("http://127.0.0.1:{edge_port}{path}"))
        .output()?;
    let text = String::from_utf8(out.stdout)?;
    let (answer, code) = text.rsplit_once('\n').context("curl's status line")?;
    Ok((code.trim().parse()?, answer.to_owned()))
}

fn bodies(notes: &Value) -> Vec<(String, Value)> {
    notes["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["body"].as_str().unwrap_or("").to_owned(),
                n["author"].clone(),
            )
        })
        .collect()
}

#[test]
fn the_notes_app_goes_to_production_with_its_migrations() -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The database server, on a host of its own.
    let db_host = rhone_testkit::netns::Namespace::create()?;
    let pg = rt.block_on(rhone_testkit::postgres::start_on(&db_host))?;
    let password = pg
        .admin_url
        .split_once("rhone:")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(p, _)| p.to_owned())
        .context("the admin password")?;

    let dir = tempfile::tempdir()?;
    let ports = support::free_ports()?;
    let dev = start_dev(dir.path(), &ports)?;
    dev.ok(&["workspaces", "create", "acme"])?;
    dev.ok(&["projects", "create", "-w", "acme", "shop"])?;
    dev.ok(&["apps", "create", "-w", "acme", "-p", "shop", "notes"])?;
    let env = |name: &str, extra: &[&str]| -> Result<String> {
        dev.ok(&[
            &["envs", "create"][..],
            &APP,
            &[name, "--kind", name],
            extra,
        ]
        .concat())
    };
    env("preview", &["--scale-to-zero", "false"])?;
    env(
        "production",
        &["--requires-approval", "false", "--self-approval", "true"],
    )?;

    // An operator registers the server; each environment gets a database of its own.
    let added = with_stdin(&dev, &["providers", "add", "pg1"], &pg.admin_url)?;
    assert!(added.contains("pg1"), "{added}");
    let mut said = vec![added];
    for env in ["preview", "production"] {
        let bound = dev.ok(&[&["databases", "bind"][..], &APP, &[env, "pg1"]].concat())?;
        assert!(bound.contains("succeeded"), "{bound}");
        said.push(bound);
        said.push(with_stdin(
            &dev,
            &[&["secrets", "set"][..], &APP, &[env, "NOTES_KEY"]].concat(),
            NOTES_KEY,
        )?);
    }
    said.push(dev.ok(&[&["databases", "list"][..], &APP, &["production"]].concat())?);

    // Step 1: the table. Preview, then production.
    let repo = commit_step(dir.path(), 1)?;
    let first = deploy(&dev, &repo)?;
    assert_eq!(first["status"], "SUCCEEDED", "{first}");
    let preview_host = evidence(&first, "route_key")
        .and_then(Value::as_str)
        .context("the preview's host")?
        .to_owned();
    let stats = json(&http_get(ports[1], &preview_host, "/_rhone/stats")?)?;
    assert_eq!(
        stats["schema"],
        serde_json::json!(["migrations/0001_notes.sql"]),
        "{stats}"
    );
    let first_id = first["targetId"].as_str().context("deployment")?.to_owned();
    let promoted = promote(&dev, &first_id)?;
    ensure!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let prod_host = "notes.shop.acme.rhone.localhost";
    let (code, answer) = post(ports[1], prod_host, "/notes", r#"{"body": "before"}"#)?;
    assert_eq!(code, 201, "{answer}");

    // Step 2: a nullable column (expand). The row written before is served after.
    let repo = commit_step(dir.path(), 2)?;
    let second = deploy(&dev, &repo)?;
    assert_eq!(second["status"], "SUCCEEDED", "{second}");
    let second_id = second["targetId"]
        .as_str()
        .context("deployment")?
        .to_owned();
    let promoted = promote(&dev, &second_id)?;
    ensure!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let (code, answer) = post(
        ports[1],
        prod_host,
        "/notes",
        r#"{"body": "after", "author": "ann"}"#,
    )?;
    assert_eq!(code, 201, "{answer}");
    let notes = json(&http_get(ports[1], prod_host, "/notes")?)?;
    assert_eq!(
        bodies(&notes),
        [
            ("before".to_owned(), Value::Null),
            ("after".to_owned(), Value::from("ann"))
        ],
        "{notes}"
    );
    let stats = json(&http_get(ports[1], prod_host, "/_rhone/stats")?)?;
    use sha2::Digest;
    assert_eq!(
        stats["notes_key_sha256"],
        hex::encode(sha2::Sha256::digest(NOTES_KEY.as_bytes())),
        "{stats}"
    );
    assert_eq!(
        stats["schema"],
        serde_json::json!(["migrations/0001_notes.sql", "migrations/0002_author.sql"]),
        "{stats}"
    );
    // Production's rows are production's: the preview's database has none of them.
    let preview_notes = json(&http_get(ports[1], &preview_host, "/notes")?)?;
    assert!(bodies(&preview_notes).is_empty(), "{preview_notes}");

    // Step 3: a dropped column (contract). The preview serves the release first; its
    // Migration then waits for an approval naming the statement.
    let repo = commit_step(dir.path(), 3)?;
    let third = deploy(&dev, &repo)?;
    let third_op = third["id"].as_str().context("the deploy")?.to_owned();
    let waiting = waiting_migration(&dev, &third_op, Duration::from_secs(120))?;
    let why = waiting["error"].as_str().unwrap_or_default();
    assert!(
        why.contains("0003_drop_legacy_tag.sql:2:1 drop-column"),
        "{waiting}"
    );
    let migration = waiting["id"].as_str().context("id")?.to_owned();
    said.push(dev.ok(&[
        "ops",
        "approve",
        &migration,
        "--reason",
        "legacy_tag is unused",
    ])?);
    let third = wait_op(&dev, &third_op, Duration::from_secs(120), ended)?;
    assert_eq!(third["status"], "SUCCEEDED", "{third}");
    let contract = evidence(&third, "contract_migration").context("contract evidence")?;
    assert_eq!(
        contract["applied"],
        serde_json::json!(["migrations/0003_drop_legacy_tag.sql"]),
        "{third}"
    );

    // To production: the promotion moves the route, drains the old allocations, then waits
    // on the same approval for production's database.
    let third_id = third["targetId"].as_str().context("deployment")?.to_owned();
    let promotions = |dev: &Dev| -> Result<Vec<String>> {
        let list = json(&dev.ok(&["--json", "ops", "list", "--kind", "promotion"])?)?;
        Ok(list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["id"].as_str().map(str::to_owned))
            .collect())
    };
    let earlier = promotions(&dev)?;
    let mut promoting = Command::new(RHONE)
        .args(
            [
                &["promote", third_id.as_str()][..],
                &APP,
                &["--env", "production"],
            ]
            .concat(),
        )
        .env("RHONE_CONFIG", &dev.config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // What the command prints, line by line, as it prints it.
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stdout = promoting.stdout.take().context("stdout")?;
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    // The promotion of that deployment, once the command has asked for it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let promotion = loop {
        if let Some(id) = promotions(&dev)?.into_iter().find(|p| !earlier.contains(p)) {
            break id;
        }
        ensure!(Instant::now() < deadline, "no promotion of {third_id}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let waiting = waiting_migration(&dev, &promotion, Duration::from_secs(180))?;
    let before_approval = json(&http_get(ports[1], prod_host, "/notes")?)?;
    assert!(
        before_approval["columns"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c == "legacy_tag")),
        "nothing is dropped before the approval: {before_approval}"
    );
    let migration = waiting["id"].as_str().context("id")?.to_owned();
    // The command says where the decision goes (the promotion itself runs on).
    let mut printed = String::new();
    let told = format!("rhone ops approve {migration}");
    while !printed.contains(&told) {
        match lines.recv_timeout(Duration::from_secs(30)) {
            Ok(line) => printed.push_str(&(line + "\n")),
            Err(_) => bail!("the promotion did not say where the approval goes: {printed}"),
        }
    }
    said.push(dev.ok(&["ops", "approve", &migration])?);
    let promoted = promoting.wait_with_output()?;
    printed.extend(lines.try_iter().map(|l| l + "\n"));
    ensure!(
        promoted.status.success(),
        "{printed}\n{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    said.push(printed);
    let notes = json(&http_get(ports[1], prod_host, "/notes")?)?;
    assert_eq!(bodies(&notes).len(), 2, "{notes}");
    assert!(
        notes["columns"]
            .as_array()
            .is_some_and(|c| !c.iter().any(|c| c == "legacy_tag")),
        "{notes}"
    );

    // Back to step 2 is refused, naming the migration: a contract it does not know was
    // applied, and the column it reads is gone.
    let back = dev.rhone(
        &[
            &["rollback"][..],
            &APP,
            // The deployment before the current owner: step 2's, in production.
            &["--env", "production"],
        ]
        .concat(),
    )?;
    let told = format!(
        "{}{}",
        String::from_utf8_lossy(&back.stdout),
        String::from_utf8_lossy(&back.stderr)
    );
    assert!(!back.status.success(), "{told}");
    assert!(told.contains("0003_drop_legacy_tag"), "{told}");
    said.push(told);

    // Neither the secret nor the server's password was ever shown.
    said.push(std::fs::read_to_string(&dev.log)?);
    said.extend(dev.lines.iter().cloned());
    for text in &said {
        for secret in [NOTES_KEY, password.as_str()] {
            assert!(!text.contains(secret), "a secret was shown: {text}");
        }
    }
    Ok(())
}

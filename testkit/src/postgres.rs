//! Fresh PostgreSQL databases for tests, on the server `scripts/test.sh` started or on
//! one started per test process in a temporary directory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio::sync::OnceCell;

use crate::process::{self, NotReady, Supervised};

/// Admin URL (`postgres://rhone@127.0.0.1:PORT/postgres`) of an already running server to
/// use instead of starting one. Its user must be allowed to create and drop databases.
pub const URL_ENV: &str = "RHONE_TEST_POSTGRES_URL";

/// Where Debian puts each installed major version's server binaries.
const DEBIAN_ROOT: &str = "/usr/lib/postgresql";
/// PostgreSQL refuses to run as root; as root the server runs as this system user.
const SERVER_USER: &str = "postgres";
const START_TIMEOUT: Duration = Duration::from_secs(60);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const QUERY_TIMEOUT: Duration = Duration::from_secs(60);
const ATTEMPTS: usize = 3;
/// What every test server's `initdb` is given: the superuser `rhone`, UTF-8, no fsync.
const INITDB_ARGS: [&str; 6] = ["-U", "rhone", "-E", "UTF8", "--locale=C", "--no-sync"];

struct Server {
    admin_url: String,
    psql: PathBuf,
    /// The server this process started, if it started one.
    _process: Option<Supervised>,
}

static SERVER: OnceCell<Server> = OnceCell::const_new();

/// Creates a fresh, empty database named [`crate::sanitize`]`(name)` and returns its URL.
/// A database of that name is dropped first, connections and all.
///
/// Names are not made unique here: pass [`crate::unique_name`] when tests that run at the
/// same time could share a name.
pub async fn database(name: &str) -> Result<String> {
    let server = server().await?;
    let db = crate::sanitize(name);
    // `sanitize` leaves only [a-z0-9_], so quoting needs no escaping.
    psql(
        server,
        &[
            format!(r#"DROP DATABASE IF EXISTS "{db}" WITH (FORCE)"#),
            // template0 takes no connections, so concurrent creates never find it busy.
            format!(r#"CREATE DATABASE "{db}" TEMPLATE template0"#),
        ],
    )
    .await
    .with_context(|| format!("creating database {db}"))?;
    Ok(with_database(&server.admin_url, &db))
}

/// The admin URL of the server [`database`] uses, for tests that manage databases or
/// roles themselves.
pub async fn admin_url() -> Result<String> {
    Ok(server().await?.admin_url.clone())
}

async fn server() -> Result<&'static Server> {
    SERVER
        .get_or_try_init(|| async {
            match std::env::var(URL_ENV).ok().filter(|u| !u.trim().is_empty()) {
                Some(url) => Ok(Server {
                    admin_url: url.trim().to_owned(),
                    psql: find_psql()?,
                    _process: None,
                }),
                None => start().await.context("starting PostgreSQL for tests"),
            }
        })
        .await
}

async fn psql(server: &Server, statements: &[String]) -> Result<()> {
    let mut command = tokio::process::Command::new(&server.psql);
    command.args([
        "-X",
        "-q",
        "-w",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        &server.admin_url,
    ]);
    for statement in statements {
        command.arg("-c").arg(statement);
    }
    command.env("PGCONNECT_TIMEOUT", "10");
    tokio::time::timeout(QUERY_TIMEOUT, process::run(command, "psql"))
        .await
        .map_err(|_| anyhow!("psql did not finish within {QUERY_TIMEOUT:?}"))?
}

/// Replaces the database (the URL's path) in a `postgres://` URL, keeping any query.
fn with_database(url: &str, db: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[after_scheme..];
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority_end = after_scheme + authority_len;
    let query = url[authority_end..]
        .find('?')
        .map_or("", |i| &url[authority_end + i..]);
    format!("{}/{db}{query}", &url[..authority_end])
}

/// The newest `/usr/lib/postgresql/N/bin` that has a server.
fn find_bin_dir() -> Result<PathBuf> {
    let entries = std::fs::read_dir(DEBIAN_ROOT).ok();
    let newest = entries
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .max_by_key(|(version, _)| *version);
    newest.map(|(_, bin)| bin).ok_or_else(|| {
        anyhow!("PostgreSQL server not found in {DEBIAN_ROOT}/*/bin: run scripts/install-deps.sh")
    })
}

fn find_psql() -> Result<PathBuf> {
    if let Some(psql) = find_bin_dir()
        .ok()
        .map(|bin| bin.join("psql"))
        .filter(|p| p.is_file())
    {
        return Ok(psql);
    }
    process::find_program("psql")
        .ok_or_else(|| anyhow!("psql not found: run scripts/install-deps.sh"))
}

async fn start() -> Result<Server> {
    let bin = find_bin_dir()?;
    let run_as = process::is_root()?.then_some(SERVER_USER);
    let dir = tempfile::Builder::new()
        .prefix("rhone-pg-")
        .tempdir()
        .context("creating a directory for PostgreSQL")?;
    if let Some(user) = run_as {
        let mut chown = tokio::process::Command::new("chown");
        chown.arg(format!("{user}:")).arg(dir.path());
        process::run(chown, &format!("chown to the {user} user (does it exist?)")).await?;
    }
    let data = dir.path().join("data");
    let mut initdb = as_user(run_as, &bin.join("initdb"), dir.path());
    initdb
        .arg("-D")
        .arg(&data)
        .args(["-A", "trust"])
        .args(INITDB_ARGS);
    process::run(initdb, "initdb").await?;

    let mut attempt = 1;
    loop {
        match start_once(&bin, run_as, dir.path(), &data).await {
            Ok((admin_url, process)) => {
                // From here the wrapper owns the directory and removes it at the end.
                let _ = dir.keep();
                tracing::info!(%admin_url, "PostgreSQL ready");
                return Ok(Server {
                    admin_url,
                    psql: bin.join("psql"),
                    _process: Some(process),
                });
            }
            Err(NotReady::Exited(e)) if attempt < ATTEMPTS => {
                tracing::warn!(attempt, error = %e, "PostgreSQL exited early; retrying");
                attempt += 1;
            }
            Err(e) => return Err(e.into_error()),
        }
    }
}

async fn start_once(
    bin: &Path,
    run_as: Option<&str>,
    dir: &Path,
    data: &Path,
) -> std::result::Result<(String, Supervised), NotReady> {
    let port = process::free_port().map_err(NotReady::Failed)?;
    let args: Vec<String> = vec![
        "-D".into(),
        data.display().to_string(),
        "-p".into(),
        port.to_string(),
        // The socket goes in our own directory, not /var/run/postgresql.
        "-k".into(),
        dir.display().to_string(),
        "-c".into(),
        "listen_addresses=127.0.0.1".into(),
        "-c".into(),
        "max_connections=200".into(),
        // Test data is thrown away: durability only costs time.
        "-c".into(),
        "fsync=off".into(),
        "-c".into(),
        "synchronous_commit=off".into(),
        "-c".into(),
        "full_page_writes=off".into(),
    ];
    let mut server =
        Supervised::spawn(dir, run_as, &bin.join("postgres"), &args).map_err(NotReady::Failed)?;
    let admin_url = format!("postgres://rhone@127.0.0.1:{port}/postgres");
    accepting(bin, &mut server, &admin_url).await?;
    Ok((admin_url, server))
}

/// Waits until `server` answers `select 1` at `admin_url`.
async fn accepting(
    bin: &Path,
    server: &mut Supervised,
    admin_url: &str,
) -> std::result::Result<(), NotReady> {
    let psql = bin.join("psql");
    process::wait_ready("PostgreSQL", server, START_TIMEOUT, || {
        let mut command = tokio::process::Command::new(&psql);
        command.args(["-X", "-q", "-w", "-d", admin_url, "-c", "select 1"]);
        command.env("PGCONNECT_TIMEOUT", "2");
        process::probe_command(command, PROBE_TIMEOUT)
    })
    .await
}

/// A PostgreSQL server of its own, standing for another machine: it listens on port 5432
/// of a test host ([`crate::netns::Namespace`]) and takes a password (scram-sha-256) from
/// any address, as a database server an operator registers would. Stopped when dropped.
pub struct Standalone {
    /// `postgres://rhone:PASSWORD@ADDRESS:5432/postgres`: its superuser.
    pub admin_url: String,
    _process: Supervised,
}

/// Starts a [`Standalone`] server on `host`. Needs root (the namespace, and the server runs
/// as the `postgres` user).
pub async fn start_on(host: &crate::netns::Namespace) -> Result<Standalone> {
    let bin = find_bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("rhone-pg-host-")
        .tempdir()
        .context("creating a directory for PostgreSQL")?;
    let mut chown = tokio::process::Command::new("chown");
    chown.arg(format!("{SERVER_USER}:")).arg(dir.path());
    process::run(chown, "chown to the postgres user (does it exist?)").await?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let password = format!("pw{:x}{:x}", stamp, std::process::id());
    let pwfile = dir.path().join("pwfile");
    std::fs::write(&pwfile, &password)?;
    let mut chown = tokio::process::Command::new("chown");
    chown.arg(format!("{SERVER_USER}:")).arg(&pwfile);
    process::run(chown, "chown the password file").await?;
    let data = dir.path().join("data");
    let mut initdb = as_user(Some(SERVER_USER), &bin.join("initdb"), dir.path());
    initdb
        .arg("-D")
        .arg(&data)
        .arg("--pwfile")
        .arg(&pwfile)
        .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
        .args(INITDB_ARGS);
    process::run(initdb, "initdb").await?;
    std::fs::remove_file(&pwfile)?;
    let hba = data.join("pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba)?;
    rules.push_str("host all all 0.0.0.0/0 scram-sha-256\n");
    std::fs::write(&hba, rules)?;

    let postgres = bin.join("postgres").display().to_string();
    let args: Vec<String> = [
        "netns",
        "exec",
        &host.name,
        "setpriv",
        "--reuid",
        SERVER_USER,
        "--regid",
        SERVER_USER,
        "--init-groups",
        "--",
        &postgres,
        "-D",
        &data.display().to_string(),
        "-p",
        "5432",
        "-k",
        &dir.path().display().to_string(),
        "-c",
        &format!("listen_addresses={}", host.address),
        "-c",
        "fsync=off",
        "-c",
        "synchronous_commit=off",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut server = Supervised::spawn(dir.path(), None, Path::new("ip"), &args)?;
    let admin_url = format!("postgres://rhone:{password}@{}:5432/postgres", host.address);
    accepting(&bin, &mut server, &admin_url)
        .await
        .map_err(NotReady::into_error)?;
    let _ = dir.keep();
    Ok(Standalone {
        admin_url,
        _process: server,
    })
}

/// `program` run as `user` through `runuser` when given, from `cwd` (a directory that
/// user can enter, so the PostgreSQL tools do not complain about the current one).
fn as_user(user: Option<&str>, program: &Path, cwd: &Path) -> tokio::process::Command {
    let mut command = match user {
        Some(user) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", user, "--"]).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    };
    command.current_dir(cwd);
    command
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: &str, expected: &str) {
        assert_eq!(with_database(url, "t1"), expected, "with_database({url:?})");
    }

    #[test]
    fn with_database_table() {
        check(
            "postgres://rhone@127.0.0.1:5432/postgres",
            "postgres://rhone@127.0.0.1:5432/t1",
        );
        check(
            "postgres://rhone@127.0.0.1:5432",
            "postgres://rhone@127.0.0.1:5432/t1",
        );
        check(
            "postgres://rhone@127.0.0.1:5432/",
            "postgres://rhone@127.0.0.1:5432/t1",
        );
        check(
            "postgresql://u:p%2Fw@h:1/postgres?sslmode=disable",
            "postgresql://u:p%2Fw@h:1/t1?sslmode=disable",
        );
        check(
            "postgres://h?sslmode=disable",
            "postgres://h/t1?sslmode=disable",
        );
    }
}

//! The client commands: each one GraphQL call (or a few to resolve names), human output by
//! default and the API's JSON with `--json`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::client::{Api, Credentials};

mod follow;
mod release;

use follow::{OnWait, follow, print_stage};

#[derive(clap::Subcommand)]
pub enum ClientCommand {
    /// Store the API address and a token for the other commands.
    Login {
        /// The API's base URL, e.g. http://127.0.0.1:8080.
        #[arg(long)]
        api: String,
        /// The token; `-` reads it from standard input.
        #[arg(long)]
        token: String,
    },
    /// Workspaces: the top-level access boundary.
    #[command(subcommand)]
    Workspaces(WorkspacesCmd),
    /// Projects of a workspace.
    #[command(subcommand)]
    Projects(ProjectsCmd),
    /// Apps of a project.
    #[command(subcommand)]
    Apps(AppsCmd),
    /// Environments of an app (preview, staging, production).
    #[command(subcommand)]
    Envs(EnvsCmd),
    /// Operations: every meaningful mutation, with its stages.
    #[command(subcommand)]
    Ops(OpsCmd),
    /// Logs of an operation: `rhone logs build OPERATION_ID` prints a deploy's build log.
    #[command(subcommand)]
    Logs(LogsCmd),
    /// Deploy a repository (a local path or a git URL) to an environment, showing each
    /// stage until the preview is ready, or why it stopped and what to run next.
    Deploy {
        /// A local repository path (default: the current directory) or a git URL.
        source: Option<String>,
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment to deploy to.
        #[arg(long = "env", short, default_value = "preview")]
        environment: String,
        /// Branch, tag or commit (default: HEAD).
        #[arg(long = "ref")]
        git_ref: Option<String>,
    },
    /// Promote a validated preview deployment (its deploy reached preview_ready) to an
    /// environment: the exact artifact, no rebuild. Shows each stage until the route has
    /// moved and the new allocations are healthy; an environment that requires approval
    /// waits for `rhone ops approve ID` (run it in another terminal).
    Promote {
        /// The preview deployment's id (`rhone deploy` prints it).
        deployment: String,
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment to promote to.
        #[arg(long = "env", short, default_value = "production")]
        environment: String,
        /// How many allocations to run, 1 to 20.
        #[arg(long, default_value_t = 1)]
        instances: u32,
    },
    /// Apply a deployment's migrations to the environment's own database, as a Migration
    /// operation: classified, dry run on a scratch copy, locked, applied, verified. A
    /// contract (destructive) migration waits for `rhone ops approve ID`, naming each
    /// statement; one an artifact still serving needs the old shape for waits for
    /// `rhone ops retry ID` once the route has moved.
    Migrate {
        /// The deployment whose artifact carries the migrations.
        deployment: String,
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment whose database is migrated.
        #[arg(long = "env", short)]
        environment: String,
    },
    /// Point an environment's route back at a deployment that served it before (default:
    /// the one before the current owner), showing each stage like `promote`.
    Rollback {
        #[command(flatten)]
        app_ref: AppRef,
        #[arg(long = "env", short, default_value = "production")]
        environment: String,
        /// The deployment to return to.
        #[arg(long)]
        to: Option<String>,
    },
    /// Who serves a host: its route owner's deployment, artifact and epoch.
    Route {
        /// A host, e.g. web.shop.acme.rhone.localhost (a port is ignored).
        host: String,
    },
    /// Your API tokens: list, create (shown once), revoke.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// An environment's secrets: set (the value from stdin or a file, never an argument),
    /// unset, list (names and versions, never values).
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Database providers (PostgreSQL servers, added by platform operators): add, list.
    #[command(subcommand)]
    Providers(ProvidersCmd),
    /// An environment's database: bind one (its own, or another environment's to read),
    /// list.
    #[command(subcommand)]
    Databases(DatabasesCmd),
}

#[derive(clap::Subcommand)]
pub enum ProvidersCmd {
    /// The registered providers: name, host, point-in-time recovery.
    List,
    /// Register a PostgreSQL server as provider NAME. Its admin URL
    /// (postgres://ROLE:PASSWORD@HOST:PORT/DB, a role with CREATEDB and CREATEROLE) is read
    /// from stdin or --from-file, never an argument; Rhone checks it by connecting.
    Add {
        name: String,
        /// Read the admin URL from this file instead of stdin.
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
        /// The server keeps point-in-time recovery: migrations take it as their backup
        /// posture instead of a dump of their own.
        #[arg(long)]
        point_in_time_recovery: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum DatabasesCmd {
    /// The environment's database bindings.
    List {
        #[command(flatten)]
        app_ref: AppRef,
        env: String,
    },
    /// Give ENV a database and role of its own on PROVIDER (or, with --read-only
    /// --database NAME, read another environment's), and set its DATABASE_URL secret.
    Bind {
        #[command(flatten)]
        app_ref: AppRef,
        env: String,
        provider: String,
        /// The database to read (another environment's), with --read-only.
        #[arg(long)]
        database: Option<String>,
        #[arg(long)]
        read_only: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum SecretsCmd {
    /// The environment's secrets: name, version, who set it and when.
    List {
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment's name.
        env: String,
    },
    /// Set NAME to the value read from stdin (one trailing newline dropped) or from
    /// --from-file; allocations started from now on get it as the variable NAME.
    Set {
        #[command(flatten)]
        app_ref: AppRef,
        env: String,
        /// A variable name: letters, digits and `_`.
        name: String,
        /// Read the value from this file (as is) instead of stdin.
        #[arg(long)]
        from_file: Option<std::path::PathBuf>,
    },
    /// Remove NAME.
    Unset {
        #[command(flatten)]
        app_ref: AppRef,
        env: String,
        name: String,
    },
}

#[derive(clap::Subcommand)]
pub enum TokensCmd {
    /// Your tokens: name, prefix, when created, last used, expires, revoked.
    List,
    /// Create a token and print it, this once (the API keeps only its SHA-256).
    Create {
        name: String,
        /// Days until it expires (1 to 365).
        #[arg(long, default_value_t = 90)]
        expires_in_days: i32,
    },
    /// Revoke a token by its id or its prefix (as `tokens list` shows them): its requests
    /// are refused from now on and its open subscriptions end.
    Revoke { token: String },
}

// The app a command acts on: its workspace, project and app, each by name or id. A plain
// comment, not a doc comment: clap would show a doc comment as the about text of the
// subcommands that have none of their own (`envs list`).
#[derive(clap::Args)]
pub struct AppRef {
    #[arg(long, short)]
    pub workspace: String,
    #[arg(long, short)]
    pub project: String,
    #[arg(long, short)]
    pub app: String,
}

#[derive(clap::Subcommand)]
pub enum WorkspacesCmd {
    List,
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
    },
}

#[derive(clap::Subcommand)]
pub enum ProjectsCmd {
    List {
        #[arg(long, short)]
        workspace: String,
    },
    Create {
        #[arg(long, short)]
        workspace: String,
        name: String,
    },
}

#[derive(clap::Subcommand)]
pub enum AppsCmd {
    List {
        #[arg(long, short)]
        workspace: String,
        #[arg(long, short)]
        project: String,
    },
    Create {
        #[arg(long, short)]
        workspace: String,
        #[arg(long, short)]
        project: String,
        name: String,
    },
}

#[derive(clap::Subcommand)]
pub enum EnvsCmd {
    List {
        #[command(flatten)]
        app_ref: AppRef,
    },
    /// Create an environment; waits for its operation and shows each stage.
    Create {
        #[command(flatten)]
        app_ref: AppRef,
        name: String,
        /// preview, staging or production.
        #[arg(long, default_value = "preview")]
        kind: String,
        /// Whether promotions need approval (default: true for production).
        #[arg(long)]
        requires_approval: Option<bool>,
        /// Whether whoever requests an operation there may approve it too (default: false
        /// for production; true there needs an admin).
        #[arg(long)]
        self_approval: Option<bool>,
        /// Whether the app sleeps when idle (default: true for preview).
        #[arg(long)]
        scale_to_zero: Option<bool>,
        /// How long the edge holds a request while the app wakes (default 10000).
        #[arg(long)]
        wake_budget_ms: Option<i64>,
    },
    /// Turn scale to zero on or off. On: after `--sleep-after-ms` without a request (and with
    /// no open WebSocket) the app sleeps, its allocations drained; the next request wakes it
    /// and the edge holds it up to the wake budget. Turned on while the app serves, a Wake
    /// run starts watching it at once.
    ScaleToZero {
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment's name.
        env: String,
        #[arg(long, conflicts_with = "off", required_unless_present = "off")]
        on: bool,
        #[arg(long)]
        off: bool,
        /// How long the app stays awake without a request, 1000 to 86400000 (default:
        /// unchanged; 300000 for a new environment).
        #[arg(long)]
        sleep_after_ms: Option<i64>,
        /// How long the edge holds a request while the app wakes, 100 to 300000 (default:
        /// unchanged).
        #[arg(long)]
        wake_budget_ms: Option<i64>,
    },
    /// Show an environment: its settings, route owner and runtime service bindings.
    Show {
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment's name.
        env: String,
    },
    /// Bind a runtime service to an environment, or replace its config. `idempotency` is
    /// Rhone's own and needs no config; the others name their provider, e.g.
    /// `--config '{"provider":"redis","url":"redis://cache:6379"}'` or
    /// `--config '{"provider":"sql","dsn_secret":"SESSION_DSN"}'`. Passwords are never
    /// given: name the secret that holds them (`password_secret`).
    Bind {
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment's name.
        env: String,
        /// session_store, broadcast, idempotency, cache, queue or object_storage.
        service: String,
        /// The binding's config, a JSON object.
        #[arg(long)]
        config: Option<String>,
    },
    /// Remove a runtime service's binding from an environment.
    Unbind {
        #[command(flatten)]
        app_ref: AppRef,
        /// The environment's name.
        env: String,
        service: String,
    },
}

#[derive(clap::Subcommand)]
pub enum LogsCmd {
    /// The build log of a deploy operation.
    Build {
        id: String,
        /// Keep printing until the operation is over.
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum OpsCmd {
    List {
        #[arg(long, short)]
        workspace: Option<String>,
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        status: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    Show {
        id: String,
    },
    /// Approve a waiting operation (e.g. a cold deploy).
    Approve {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a stuck step again (an operation that needs attention).
    Retry {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Abort a waiting or stuck operation.
    Abort {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

const OP_FIELDS: &str = "id kind status currentStage actor targetType targetId workflowId error createdAt \
    stages { seq stage attempt enteredAt evidence error }";

pub async fn run(cmd: ClientCommand, json_out: bool) -> Result<()> {
    if let ClientCommand::Login { api, token } = &cmd {
        return login(api, token, json_out).await;
    }
    let api = Api::new(Credentials::load()?)?;
    let out = |v: &Value, human: &dyn Fn(&Value)| {
        if json_out {
            println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        } else {
            human(v);
        }
    };
    match cmd {
        ClientCommand::Login { .. } => unreachable!("handled above"),
        ClientCommand::Secrets(SecretsCmd::List { app_ref, env }) => {
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "query($a: UUID!) { environments(appId: $a) { id secrets { name version setBy updatedAt } } }",
                    json!({ "a": resolve_app(&api, &app_ref).await? }),
                )
                .await?;
            let secrets = d["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["id"].as_str() == Some(e.as_str()))
                .map(|x| x["secrets"].clone())
                .unwrap_or_default();
            out(&secrets, &|v| {
                table(v, &["name", "version", "setBy", "updatedAt"])
            });
        }
        ClientCommand::Secrets(SecretsCmd::Set {
            app_ref,
            env,
            name,
            from_file,
        }) => {
            let value = secret_value(from_file.as_deref())?;
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "mutation($e: UUID!, $n: String!, $v: String!) { \
                     setSecret(environmentId: $e, name: $n, value: $v) { \
                     secret { name version setBy } operation { id } } }",
                    json!({ "e": e, "n": name, "v": value }),
                )
                .await?;
            out(&d["setSecret"], &|v| {
                println!(
                    "set {} on {env}: version {}; allocations started from now on get it (running ones at the next deploy, promotion or wake)",
                    v["secret"]["name"].as_str().unwrap_or("?"),
                    v["secret"]["version"]
                );
            });
        }
        ClientCommand::Secrets(SecretsCmd::Unset { app_ref, env, name }) => {
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "mutation($e: UUID!, $n: String!) { unsetSecret(environmentId: $e, name: $n) { operation { id } } }",
                    json!({ "e": e, "n": name }),
                )
                .await?;
            out(&d["unsetSecret"], &|_| println!("unset {name} on {env}"));
        }
        ClientCommand::Providers(ProvidersCmd::List) => {
            let d = api
                .call(
                    "{ databaseProviders { name kind host pointInTimeRecovery createdAt } }",
                    json!({}),
                )
                .await?;
            out(&d["databaseProviders"], &|v| {
                table(
                    v,
                    &["name", "kind", "host", "pointInTimeRecovery", "createdAt"],
                )
            });
        }
        ClientCommand::Providers(ProvidersCmd::Add {
            name,
            from_file,
            point_in_time_recovery,
        }) => {
            let url = secret_value(from_file.as_deref())?;
            let d = api
                .call(
                    "mutation($n: String!, $u: String!, $p: Boolean!) { \
                     addDatabaseProvider(name: $n, adminUrl: $u, pointInTimeRecovery: $p) { \
                     provider { name host pointInTimeRecovery } operation { id } } }",
                    json!({ "n": name, "u": url, "p": point_in_time_recovery }),
                )
                .await?;
            out(&d["addDatabaseProvider"], &|v| {
                println!(
                    "added provider {name} ({}); bind an environment with: rhone databases bind -w WS -p PROJECT -a APP ENV {name}",
                    v["provider"]["host"].as_str().unwrap_or("?")
                );
            });
        }
        ClientCommand::Databases(DatabasesCmd::List { app_ref, env }) => {
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "query($a: UUID!) { environments(appId: $a) { id databases { provider database role access status error } } }",
                    json!({ "a": resolve_app(&api, &app_ref).await? }),
                )
                .await?;
            let databases = d["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["id"].as_str() == Some(e.as_str()))
                .map(|x| x["databases"].clone())
                .unwrap_or_default();
            out(&databases, &|v| {
                table(
                    v,
                    &["provider", "database", "role", "access", "status", "error"],
                )
            });
        }
        ClientCommand::Databases(DatabasesCmd::Bind {
            app_ref,
            env,
            provider,
            database,
            read_only,
        }) => {
            let e = resolve_env(&api, &app_ref, &env).await?;
            let q = format!(
                "mutation($e: UUID!, $p: String!, $d: String, $r: Boolean!) {{ \
                 bindDatabase(environmentId: $e, provider: $p, database: $d, readOnly: $r) {{ operation {{ {OP_FIELDS} }} }} }}"
            );
            let d = api
                .call(
                    &q,
                    json!({ "e": e, "p": provider, "d": database, "r": read_only }),
                )
                .await?;
            let op = follow(
                &api,
                &d["bindDatabase"]["operation"],
                json_out,
                OnWait::Keep,
            )
            .await?;
            out(&op, &|_| {});
            if status_of(&op) != "succeeded" {
                bail!(
                    "operation {} ended {}",
                    op["id"].as_str().unwrap_or("?"),
                    op["status"].as_str().unwrap_or("?")
                );
            }
            if !json_out {
                println!("{env} is bound; its allocations get DATABASE_URL from their next start");
            }
        }
        ClientCommand::Tokens(TokensCmd::List) => {
            let d = api
                .call(
                    "{ tokens { id name prefix kind createdAt lastUsedAt expiresAt revokedAt } }",
                    json!({}),
                )
                .await?;
            out(&d["tokens"], &|v| {
                table(
                    v,
                    &[
                        "name",
                        "prefix",
                        "createdAt",
                        "lastUsedAt",
                        "expiresAt",
                        "revokedAt",
                        "id",
                    ],
                )
            });
        }
        ClientCommand::Tokens(TokensCmd::Create {
            name,
            expires_in_days,
        }) => {
            let d = api
                .call(
                    "mutation($n: String!, $d: Int) { createToken(name: $n, expiresInDays: $d) { id token prefix expiresAt } }",
                    json!({ "n": name, "d": expires_in_days }),
                )
                .await?;
            out(&d["createToken"], &|v| {
                println!(
                    "token {name} created (id {}), expires {}. Shown this once:",
                    v["id"].as_str().unwrap_or_default(),
                    v["expiresAt"].as_str().unwrap_or_default()
                );
                println!("{}", v["token"].as_str().unwrap_or_default());
            });
        }
        ClientCommand::Tokens(TokensCmd::Revoke { token }) => {
            let id = resolve_token(&api, &token).await?;
            let d = api
                .call(
                    "mutation($id: UUID!) { revokeToken(id: $id) { token { id name prefix revokedAt } operation { id } } }",
                    json!({ "id": id }),
                )
                .await?;
            out(&d["revokeToken"], &|v| {
                println!(
                    "token {} ({}…) revoked at {}: its requests are refused from now on",
                    v["token"]["name"].as_str().unwrap_or_default(),
                    v["token"]["prefix"].as_str().unwrap_or_default(),
                    v["token"]["revokedAt"].as_str().unwrap_or_default()
                );
            });
        }
        ClientCommand::Workspaces(WorkspacesCmd::List) => {
            let d = api
                .call("{ workspaces { id name displayName } }", json!({}))
                .await?;
            out(&d["workspaces"], &|v| {
                table(v, &["name", "displayName", "id"])
            });
        }
        ClientCommand::Workspaces(WorkspacesCmd::Create { name, display_name }) => {
            let d = api
                .call(
                    "mutation($n: String!, $d: String) { createWorkspace(name: $n, displayName: $d) { workspace { id name } } }",
                    json!({ "n": name, "d": display_name }),
                )
                .await?;
            out(&d["createWorkspace"]["workspace"], &created("workspace"));
        }
        ClientCommand::Projects(ProjectsCmd::List { workspace }) => {
            let ws = resolve_workspace(&api, &workspace).await?;
            let d = api
                .call(
                    "query($w: UUID!) { projects(workspaceId: $w) { id name } }",
                    json!({ "w": ws }),
                )
                .await?;
            out(&d["projects"], &|v| table(v, &["name", "id"]));
        }
        ClientCommand::Projects(ProjectsCmd::Create { workspace, name }) => {
            let ws = resolve_workspace(&api, &workspace).await?;
            let d = api
                .call("mutation($w: UUID!, $n: String!) { createProject(workspaceId: $w, name: $n) { project { id name } } }", json!({ "w": ws, "n": name }))
                .await?;
            out(&d["createProject"]["project"], &created("project"));
        }
        ClientCommand::Apps(AppsCmd::List { workspace, project }) => {
            let p = resolve_project(&api, &workspace, &project).await?;
            let d = api
                .call(
                    "query($p: UUID!) { apps(projectId: $p) { id name } }",
                    json!({ "p": p }),
                )
                .await?;
            out(&d["apps"], &|v| table(v, &["name", "id"]));
        }
        ClientCommand::Apps(AppsCmd::Create {
            workspace,
            project,
            name,
        }) => {
            let p = resolve_project(&api, &workspace, &project).await?;
            let d = api
                .call("mutation($p: UUID!, $n: String!) { createApp(projectId: $p, name: $n) { app { id name } } }", json!({ "p": p, "n": name }))
                .await?;
            out(&d["createApp"]["app"], &created("app"));
        }
        ClientCommand::Envs(EnvsCmd::List { app_ref }) => {
            let a = resolve_app(&api, &app_ref).await?;
            let d = api
                .call("query($a: UUID!) { environments(appId: $a) { id name kind requiresApproval scaleToZero wakeBudgetMs sleepAfterMs wakeState runtimeServices { service status config createdAt } } }", json!({ "a": a }))
                .await?;
            out(&d["environments"], &|v| {
                let rows: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|e| {
                        let mut e = e.clone();
                        e["services"] = Value::String(services_cell(&e["runtimeServices"]));
                        e
                    })
                    .collect();
                table(
                    &Value::Array(rows),
                    &[
                        "name",
                        "kind",
                        "scaleToZero",
                        "wakeState",
                        "sleepAfterMs",
                        "wakeBudgetMs",
                        "services",
                        "id",
                    ],
                )
            });
        }
        ClientCommand::Envs(EnvsCmd::Show { app_ref, env }) => {
            let a = resolve_app(&api, &app_ref).await?;
            let d = api
                .call("query($a: UUID!) { environments(appId: $a) { id name kind requiresApproval scaleToZero wakeBudgetMs sleepAfterMs wakeState createdAt \
                       routeOwner { routeKey epoch artifactDigest deployment { id } } \
                       runtimeServices { service status config createdAt error } } }", json!({ "a": a }))
                .await?;
            let shown = d["environments"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["name"] == env.as_str() || e["id"] == env.as_str())
                .cloned()
                .with_context(|| format!("no environment named {env:?} is visible to you"))?;
            out(&shown, &show_environment);
        }
        ClientCommand::Envs(EnvsCmd::Bind {
            app_ref,
            env,
            service,
            config,
        }) => {
            let service = service_arg(&service)?;
            let config: Option<Value> = config
                .map(|c| serde_json::from_str(&c))
                .transpose()
                .context("--config is not JSON (a JSON object, e.g. '{\"provider\":\"redis\",\"url\":\"redis://cache:6379\"}')")?;
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "mutation($e: UUID!, $s: RuntimeService!, $c: JSON) { \
                     bindRuntimeService(environmentId: $e, service: $s, config: $c) { \
                     replaced binding { service status config createdAt } \
                     environment { id name } operation { id status } } }",
                    json!({ "e": e, "s": service, "c": config }),
                )
                .await?;
            out(&d["bindRuntimeService"], &|v| {
                let b = &v["binding"];
                println!(
                    "{} {} to {}: {} {}",
                    if v["replaced"] == true {
                        "rebound"
                    } else {
                        "bound"
                    },
                    service_name(&b["service"]),
                    v["environment"]["name"].as_str().unwrap_or("?"),
                    b["status"].as_str().unwrap_or("?"),
                    b["config"]
                );
                println!("operation {}", v["operation"]["id"].as_str().unwrap_or("?"));
            });
        }
        ClientCommand::Envs(EnvsCmd::Unbind {
            app_ref,
            env,
            service,
        }) => {
            let service = service_arg(&service)?;
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "mutation($e: UUID!, $s: RuntimeService!) { \
                     unbindRuntimeService(environmentId: $e, service: $s) { \
                     service environment { id name } operation { id status } } }",
                    json!({ "e": e, "s": service }),
                )
                .await?;
            out(&d["unbindRuntimeService"], &|v| {
                println!(
                    "unbound {} from {}",
                    service_name(&v["service"]),
                    v["environment"]["name"].as_str().unwrap_or("?")
                );
                println!("operation {}", v["operation"]["id"].as_str().unwrap_or("?"));
            });
        }
        ClientCommand::Envs(EnvsCmd::Create {
            app_ref,
            name,
            kind,
            requires_approval,
            self_approval,
            scale_to_zero,
            wake_budget_ms,
        }) => {
            let a = resolve_app(&api, &app_ref).await?;
            let q = format!(
                "mutation($a: UUID!, $n: String!, $k: EnvironmentKind!, $r: Boolean, $sa: Boolean, $s: Boolean, $w: Int) {{ \
                 createEnvironment(appId: $a, name: $n, kind: $k, requiresApproval: $r, selfApproval: $sa, scaleToZero: $s, wakeBudgetMs: $w) {{ {OP_FIELDS} }} }}"
            );
            let d = api
                .call(&q, json!({ "a": a, "n": name, "k": kind.to_uppercase(), "r": requires_approval, "sa": self_approval, "s": scale_to_zero, "w": wake_budget_ms }))
                .await?;
            let op = follow(&api, &d["createEnvironment"], json_out, OnWait::Return).await?;
            out(&op, &|_| {});
            if status_of(&op) != "succeeded" {
                bail!(
                    "operation {} ended {}",
                    op["id"].as_str().unwrap_or("?"),
                    op["status"].as_str().unwrap_or("?")
                );
            }
        }
        ClientCommand::Envs(EnvsCmd::ScaleToZero {
            app_ref,
            env,
            on,
            off: _,
            sleep_after_ms,
            wake_budget_ms,
        }) => {
            let e = resolve_env(&api, &app_ref, &env).await?;
            let d = api
                .call(
                    "mutation($e: UUID!, $on: Boolean!, $s: Int, $w: Int) { \
                     setScaleToZero(environmentId: $e, enabled: $on, sleepAfterMs: $s, wakeBudgetMs: $w) { \
                     environment { id name scaleToZero sleepAfterMs wakeBudgetMs wakeState } \
                     operation { id status } watchWorkflowId } }",
                    json!({ "e": e, "on": on, "s": sleep_after_ms, "w": wake_budget_ms }),
                )
                .await?;
            out(&d["setScaleToZero"], &|v| {
                let env = &v["environment"];
                let n = |k: &str| env[k].as_i64().unwrap_or_default();
                if env["scaleToZero"].as_bool() == Some(true) {
                    println!(
                        "scale to zero on for {}: sleeps after {} ms without a request; wake budget {} ms; now {}",
                        env["name"].as_str().unwrap_or("?"),
                        n("sleepAfterMs"),
                        n("wakeBudgetMs"),
                        env["wakeState"].as_str().unwrap_or("?")
                    );
                } else {
                    println!(
                        "scale to zero off for {}; now {}",
                        env["name"].as_str().unwrap_or("?"),
                        env["wakeState"].as_str().unwrap_or("?")
                    );
                }
                if let Some(w) = v["watchWorkflowId"].as_str() {
                    println!("watching the route: workflow {w}");
                }
                println!("operation {}", v["operation"]["id"].as_str().unwrap_or("?"));
            });
        }
        ClientCommand::Ops(OpsCmd::List {
            workspace,
            kind,
            status,
            limit,
        }) => {
            let ws = match workspace {
                Some(w) => resolve_workspace(&api, &w).await?,
                None => only_workspace(&api).await?,
            };
            let d = api
                .call(
                    "query($w: UUID!, $k: OperationKind, $s: OperationStatus, $f: Int) { operations(workspaceId: $w, kind: $k, status: $s, first: $f) { nodes { id kind status currentStage targetType createdAt } } }",
                    json!({ "w": ws, "k": kind.map(|k| k.to_uppercase()), "s": status.map(|s| s.to_uppercase()), "f": limit }),
                )
                .await?;
            out(&d["operations"]["nodes"], &|v| {
                table(v, &["id", "kind", "status", "currentStage", "createdAt"])
            });
        }
        ClientCommand::Deploy {
            source,
            app_ref,
            environment,
            git_ref,
        } => {
            let env = resolve_env(&api, &app_ref, &environment).await?;
            let repository = repository_arg(source.as_deref())?;
            let q = format!(
                "mutation($e: UUID!, $r: String!, $g: String) {{ deploy(environmentId: $e, repository: $r, ref: $g) {{ {OP_FIELDS} }} }}"
            );
            let d = api
                .call(&q, json!({ "e": env, "r": repository, "g": git_ref }))
                .await?;
            let op = follow(&api, &d["deploy"], json_out, OnWait::Return).await?;
            if json_out {
                println!("{}", serde_json::to_string_pretty(&op)?);
            } else if status_of(&op) == "succeeded" {
                let url = op["stages"]
                    .as_array()
                    .and_then(|s| s.last())
                    .and_then(|s| s["evidence"]["url"].as_str());
                println!("preview ready: {}", url.unwrap_or("(no URL recorded)"));
                println!(
                    "promote it with: rhone promote {} -w {} -p {} -a {} --env ENV",
                    op["targetId"].as_str().unwrap_or("DEPLOYMENT_ID"),
                    app_ref.workspace,
                    app_ref.project,
                    app_ref.app
                );
            }
            if status_of(&op) != "succeeded" {
                bail!(
                    "deploy {} is {} at {}",
                    op["id"].as_str().unwrap_or("?"),
                    status_of(&op),
                    follow::stopped_at(&op)
                );
            }
        }
        ClientCommand::Promote {
            deployment,
            app_ref,
            environment,
            instances,
        } => {
            let env = resolve_env(&api, &app_ref, &environment).await?;
            release::promote(&api, &deployment, &env, instances, json_out).await?
        }
        ClientCommand::Rollback {
            app_ref,
            environment,
            to,
        } => {
            let env = resolve_env(&api, &app_ref, &environment).await?;
            release::rollback(&api, &env, to.as_deref(), json_out).await?
        }
        ClientCommand::Migrate {
            deployment,
            app_ref,
            environment,
        } => {
            let env = resolve_env(&api, &app_ref, &environment).await?;
            let q = format!(
                "mutation($e: UUID!, $d: UUID!) {{ migrate(environmentId: $e, deploymentId: $d) {{ {OP_FIELDS} }} }}"
            );
            let d = api.call(&q, json!({ "e": env, "d": deployment })).await?;
            let op = follow(&api, &d["migrate"], json_out, OnWait::Keep).await?;
            out(&op, &|_| {});
            if status_of(&op) != "succeeded" {
                bail!(
                    "operation {} ended {}",
                    op["id"].as_str().unwrap_or("?"),
                    op["status"].as_str().unwrap_or("?")
                );
            }
        }
        ClientCommand::Route { host } => release::route(&api, &host, json_out).await?,
        ClientCommand::Logs(LogsCmd::Build { id, follow }) => {
            build_log(&api, &id, follow, json_out).await?
        }
        ClientCommand::Ops(OpsCmd::Show { id }) => {
            let d = api
                .call(
                    &format!(
                        "query($id: UUID!) {{ operation(id: $id) {{ {OP_FIELDS} \
                     auditEntries {{ actor action targetType targetId detail createdAt }} }} }}"
                    ),
                    json!({ "id": id }),
                )
                .await?;
            out(&d["operation"], &show_operation);
        }
        ClientCommand::Ops(OpsCmd::Approve { id, reason }) => {
            decide(&api, &id, "APPROVE", reason, json_out).await?
        }
        ClientCommand::Ops(OpsCmd::Retry { id, reason }) => {
            decide(&api, &id, "RETRY", reason, json_out).await?
        }
        ClientCommand::Ops(OpsCmd::Abort { id, reason }) => {
            decide(&api, &id, "ABORT", reason, json_out).await?
        }
    }
    Ok(())
}

/// Prints a build log from the start; with `follow`, until the operation is over.
async fn build_log(api: &Api, id: &str, follow: bool, json_out: bool) -> Result<()> {
    let mut after = 0i64;
    loop {
        let d = api
            .call(
                "query($id: UUID!, $a: Int!) { buildLog(operationId: $id, afterSeq: $a, first: 200) { seq attempt text createdAt } operation(id: $id) { status } }",
                json!({ "id": id, "a": after }),
            )
            .await?;
        let chunks = d["buildLog"].as_array().cloned().unwrap_or_default();
        for c in &chunks {
            if json_out {
                println!("{c}");
            } else {
                print!("{}", c["text"].as_str().unwrap_or(""));
            }
            after = c["seq"].as_i64().unwrap_or(after);
        }
        let over = matches!(
            status_of(&d["operation"]).as_str(),
            "succeeded" | "failed" | "aborted"
        );
        if chunks.len() == 500 {
            continue;
        }
        if !follow || over {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A git URL as given, or a local path made absolute (the builder clones it).
fn repository_arg(source: Option<&str>) -> Result<String> {
    let s = source.unwrap_or(".");
    if s.contains("://") || s.starts_with("git@") {
        return Ok(s.to_owned());
    }
    let path = std::fs::canonicalize(s)
        .with_context(|| format!("{s} is neither a git URL nor an existing directory"))?;
    if !path.join(".git").exists() {
        bail!(
            "{} is not a git repository (no .git): commit your app first, or pass a git URL",
            path.display()
        );
    }
    Ok(path.display().to_string())
}

async fn login(api_url: &str, token: &str, json_out: bool) -> Result<()> {
    let token = if token == "-" {
        let mut s = String::new();
        std::io::stdin()
            .read_line(&mut s)
            .context("reading the token from stdin")?;
        s.trim().to_owned()
    } else {
        token.to_owned()
    };
    let creds = Credentials {
        api: api_url.trim_end_matches('/').to_owned(),
        token,
    };
    let me = Api::new(Credentials {
        api: creds.api.clone(),
        token: creds.token.clone(),
    })?
    .call("{ me { actor user { email } } }", json!({}))
    .await
    .context("the API refused this token")?;
    let path = creds.save()?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&me["me"])?);
    } else {
        println!(
            "logged in to {} as {} (saved in {})",
            creds.api,
            me["me"]["user"]["email"]
                .as_str()
                .or(me["me"]["actor"].as_str())
                .unwrap_or("?"),
            path.display()
        );
    }
    Ok(())
}

async fn decide(
    api: &Api,
    id: &str,
    decision: &str,
    reason: Option<String>,
    json_out: bool,
) -> Result<()> {
    let d = api
        .call(
            &format!("mutation($id: UUID!, $d: Decision!, $r: String) {{ decideOperation(id: $id, decision: $d, reason: $r) {{ {OP_FIELDS} }} }}"),
            json!({ "id": id, "d": decision, "r": reason }),
        )
        .await?;
    let op = &d["decideOperation"];
    if json_out {
        println!("{}", serde_json::to_string_pretty(op)?);
    } else {
        println!(
            "sent {} to operation {} (now {} at {})",
            decision.to_lowercase(),
            id,
            op["status"].as_str().unwrap_or("?"),
            op["currentStage"].as_str().unwrap_or("?")
        );
    }
    Ok(())
}

fn show_operation(op: &Value) {
    let f = |k: &str| op[k].as_str().unwrap_or("-").to_owned();
    println!(
        "operation  {}\nkind       {}\nstatus     {}\nstage      {}\nactor      {}\ntarget     {} {}\nworkflow   {}",
        f("id"),
        f("kind"),
        f("status"),
        f("currentStage"),
        f("actor"),
        f("targetType"),
        f("targetId"),
        f("workflowId")
    );
    if let Some(e) = op["error"].as_str() {
        println!("error      {e}");
    }
    println!("stages:");
    for s in op["stages"].as_array().into_iter().flatten() {
        print_stage(s);
        if s["evidence"].as_object().is_some_and(|o| !o.is_empty()) {
            println!("        evidence {}", s["evidence"]);
        }
    }
    let entries = op["auditEntries"].as_array().cloned().unwrap_or_default();
    if !entries.is_empty() {
        println!("audit:");
        for e in &entries {
            let f = |k: &str| e[k].as_str().unwrap_or("-").to_owned();
            println!(
                "  {}  {:<22} {}  {}",
                f("createdAt"),
                f("action"),
                f("actor"),
                e["detail"]
            );
        }
    }
}

/// The runtime services the CLI names (`rhone.toml`'s spelling).
const SERVICES: [&str; 6] = [
    "session_store",
    "broadcast",
    "idempotency",
    "cache",
    "queue",
    "object_storage",
];

/// A service as the API's enum (`SESSION_STORE`), from `session_store` or `session-store`.
fn service_arg(service: &str) -> Result<String> {
    let name = service.trim().to_lowercase().replace('-', "_");
    if !SERVICES.contains(&name.as_str()) {
        bail!(
            "unknown runtime service {service:?}: one of {}",
            SERVICES.join(", ")
        );
    }
    Ok(name.to_uppercase())
}

/// `SESSION_STORE` as `session_store`.
fn service_name(v: &Value) -> String {
    v.as_str().unwrap_or("?").to_lowercase()
}

/// `idempotency, session_store` for a table cell; a binding that is not ready shows its
/// status (`cache (pending)`).
fn services_cell(bindings: &Value) -> String {
    let names: Vec<String> = bindings
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| match b["status"].as_str() {
            Some("ready") => service_name(&b["service"]),
            status => format!(
                "{} ({})",
                service_name(&b["service"]),
                status.unwrap_or("?")
            ),
        })
        .collect();
    if names.is_empty() {
        "-".to_owned()
    } else {
        names.join(", ")
    }
}

fn show_environment(e: &Value) {
    let f = |k: &str| match &e[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    };
    println!(
        "environment    {}\nid             {}\nkind           {}\napproval       {}\nscale to zero  {} (sleeps after {} ms; wake budget {} ms)\nwake state     {}",
        f("name"),
        f("id"),
        f("kind").to_lowercase(),
        if e["requiresApproval"] == true {
            "required"
        } else {
            "not required"
        },
        if e["scaleToZero"] == true {
            "on"
        } else {
            "off"
        },
        f("sleepAfterMs"),
        f("wakeBudgetMs"),
        f("wakeState"),
    );
    let owner = &e["routeOwner"];
    if owner.is_null() {
        println!("route          - (nothing deployed or promoted yet)");
    } else {
        println!(
            "route          {} epoch {} deployment {} artifact {}",
            owner["routeKey"].as_str().unwrap_or("?"),
            owner["epoch"],
            owner["deployment"]["id"].as_str().unwrap_or("?"),
            owner["artifactDigest"].as_str().unwrap_or("?")
        );
    }
    let bindings = e["runtimeServices"].as_array().cloned().unwrap_or_default();
    if bindings.is_empty() {
        println!("services       (none bound: rhone envs bind ENV SERVICE)");
    } else {
        println!("services:");
        for b in &bindings {
            println!(
                "  {:<15} {:<8} {}  since {}",
                service_name(&b["service"]),
                b["status"].as_str().unwrap_or("?"),
                b["config"],
                b["createdAt"].as_str().unwrap_or("?")
            );
            // Why the last probe failed (scrubbed of secret values by the API).
            if let Some(why) = b["error"].as_str() {
                println!("  {:<15} {why}", "");
            }
        }
    }
}

/// The id of one of the caller's tokens, given as its id or its display prefix (a prefix
/// that names several tokens is refused, listing them).
async fn resolve_token(api: &Api, given: &str) -> Result<String> {
    let d = api
        .call("{ tokens { id name prefix revokedAt } }", json!({}))
        .await?;
    let matches: Vec<&Value> = d["tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["id"] == given || t["prefix"].as_str().is_some_and(|p| p.starts_with(given)))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        [] => bail!("none of your tokens has the id or prefix {given:?} (`rhone tokens list`)"),
        many => bail!(
            "{} of your tokens start with {given:?}: give the id ({})",
            many.len(),
            many.iter()
                .map(|t| t["id"].as_str().unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Prints `created <what> <name> (<id>)` for a created object.
fn created(what: &'static str) -> impl Fn(&Value) {
    move |v| {
        let f = |k: &str| v[k].as_str().unwrap_or("").to_owned();
        println!("created {what} {} ({})", f("name"), f("id"));
    }
}

fn table(rows: &Value, cols: &[&str]) {
    let rows = rows.as_array().cloned().unwrap_or_default();
    if rows.is_empty() {
        println!("(none)");
        return;
    }
    let cell = |r: &Value, c: &str| match &r[c] {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    };
    let widths: Vec<usize> = cols
        .iter()
        .map(|c| {
            rows.iter()
                .map(|r| cell(r, c).len())
                .max()
                .unwrap_or(0)
                .max(c.len())
        })
        .collect();
    let line = |vals: Vec<String>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!("{}", line(cols.iter().map(|c| c.to_uppercase()).collect()));
    for r in &rows {
        println!("{}", line(cols.iter().map(|c| cell(r, c)).collect()));
    }
}

/// Finds an object by name (or id) in a list the API returned.
fn pick(list: &Value, key: &str, what: &str) -> Result<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == key || v["id"] == key)
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .with_context(|| format!("no {what} named {key:?} is visible to you"))
}

/// The caller's one workspace, for commands where naming it would be noise.
async fn only_workspace(api: &Api) -> Result<String> {
    let d = api.call("{ workspaces { id name } }", json!({})).await?;
    match d["workspaces"].as_array().map(Vec::as_slice) {
        Some([one]) => one["id"]
            .as_str()
            .map(str::to_owned)
            .context("workspace without id"),
        Some([]) | None => bail!("you have no workspace yet: rhone workspaces create NAME"),
        Some(_) => bail!("you have several workspaces: pass --workspace NAME"),
    }
}

/// An operation's status in lower case, as the CLI prints and compares it.
fn status_of(op: &Value) -> String {
    op["status"].as_str().unwrap_or("").to_lowercase()
}

async fn resolve_workspace(api: &Api, name: &str) -> Result<String> {
    let d = api.call("{ workspaces { id name } }", json!({})).await?;
    pick(&d["workspaces"], name, "workspace")
}

async fn resolve_project(api: &Api, ws: &str, name: &str) -> Result<String> {
    let w = resolve_workspace(api, ws).await?;
    let d = api
        .call(
            "query($w: UUID!) { projects(workspaceId: $w) { id name } }",
            json!({ "w": w }),
        )
        .await?;
    pick(&d["projects"], name, "project")
}

/// An environment of an app, by name or id.
/// A secret's value: the file's bytes as they are, or stdin with one trailing newline
/// dropped (what `echo` adds).
fn secret_value(file: Option<&std::path::Path>) -> Result<String> {
    use std::io::Read;
    let value = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading the secret's value from {}", path.display()))?,
        None => {
            let mut value = String::new();
            std::io::stdin()
                .read_to_string(&mut value)
                .context("reading the secret's value from stdin")?;
            let trimmed = value
                .strip_suffix("\r\n")
                .or_else(|| value.strip_suffix('\n'))
                .unwrap_or(&value);
            trimmed.to_owned()
        }
    };
    anyhow::ensure!(
        !value.is_empty(),
        "no value: pipe it on stdin (`printf %s \"$VALUE\" | rhone …`) or pass --from-file FILE"
    );
    Ok(value)
}

async fn resolve_env(api: &Api, app: &AppRef, name: &str) -> Result<String> {
    let a = resolve_app(api, app).await?;
    let d = api
        .call(
            "query($a: UUID!) { environments(appId: $a) { id name } }",
            json!({ "a": a }),
        )
        .await?;
    pick(&d["environments"], name, "environment")
}

async fn resolve_app(api: &Api, app: &AppRef) -> Result<String> {
    let p = resolve_project(api, &app.workspace, &app.project).await?;
    let d = api
        .call(
            "query($p: UUID!) { apps(projectId: $p) { id name } }",
            json!({ "p": p }),
        )
        .await?;
    pick(&d["apps"], &app.app, "app")
}

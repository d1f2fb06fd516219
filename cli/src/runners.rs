//! `rhone runners …`: platform operators' commands about runner hosts, over the GraphQL API
//! (`add` issues a runner's credential, shown once; `list`; `revoke`).

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::{Api, Credentials};

#[derive(Subcommand)]
pub enum RunnersCmd {
    /// Add a runner host to a region and cell and print the credential it registers with
    /// (shown once: the control plane keeps only its SHA-256).
    Add {
        /// The runner's name (RHONE_RUNNER_NAME on its host).
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        cell: String,
    },
    /// Every runner host: status, capacity, what is placed on it, last heartbeat.
    List,
    /// Revoke a runner host's credential: its calls are refused and nothing new is placed
    /// on it.
    Revoke { name: String },
}

const RUNNER_FIELDS: &str = "name region cell status statusChangedAt address subnet agentVersion lastSeenAt memoryMb cpuMillis slots allocations usedMemoryMb usedCpuMillis";

pub async fn run(cmd: RunnersCmd, json_out: bool) -> Result<()> {
    let api = Api::new(Credentials::load()?)?;
    match cmd {
        RunnersCmd::Add { name, region, cell } => {
            let data = api
                .call(
                    "mutation($name: String!, $region: String!, $cell: String!) { addRunner(name: $name, region: $region, cell: $cell) { name region cell credential operation { id } } }",
                    json!({ "name": name, "region": region, "cell": cell }),
                )
                .await?;
            let added = &data["addRunner"];
            if json_out {
                println!("{added}");
                return Ok(());
            }
            let credential = added["credential"].as_str().unwrap_or_default();
            println!(
                "runner {} added to region {} cell {} (operation {}).",
                added["name"].as_str().unwrap_or_default(),
                added["region"].as_str().unwrap_or_default(),
                added["cell"].as_str().unwrap_or_default(),
                added["operation"]["id"].as_str().unwrap_or_default(),
            );
            println!("Its credential, shown this once (keep it on that host only):");
            println!();
            println!("  RHONE_RUNNER_NAME={name}");
            println!("  RHONE_REGION={region}");
            println!("  RHONE_CELL={cell}");
            println!("  RHONE_RUNNER_CREDENTIAL={credential}");
            println!();
            println!("with RHONE_API_URL set to this API; then `rhone serve runner` registers it.");
            Ok(())
        }
        RunnersCmd::List => {
            let data = api
                .call(&format!("{{ runners {{ {RUNNER_FIELDS} }} }}"), json!({}))
                .await?;
            let runners = data["runners"].as_array().cloned().unwrap_or_default();
            if json_out {
                println!("{}", Value::Array(runners));
                return Ok(());
            }
            print_table(&runners);
            Ok(())
        }
        RunnersCmd::Revoke { name } => {
            let data = api
                .call(
                    &format!("mutation($name: String!) {{ revokeRunner(name: $name) {{ {RUNNER_FIELDS} }} }}"),
                    json!({ "name": name }),
                )
                .await?;
            if json_out {
                println!("{}", data["revokeRunner"]);
            } else {
                println!("runner {name} revoked: its calls are refused from now on");
            }
            Ok(())
        }
    }
}

fn print_table(runners: &[Value]) {
    if runners.is_empty() {
        println!("no runners; add one with `rhone runners add NAME --region R --cell C`");
        return;
    }
    let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("-").to_owned();
    let n = |r: &Value, k: &str| r[k].as_i64().unwrap_or(0);
    println!(
        "{:<16} {:<10} {:<10} {:<10} {:>14} {:>16} {:>9}  {:<20} VERSION",
        "NAME", "REGION", "CELL", "STATUS", "MEMORY MiB", "CPU millicores", "ALLOCS", "LAST SEEN",
    );
    for r in runners {
        println!(
            "{:<16} {:<10} {:<10} {:<10} {:>14} {:>16} {:>9}  {:<20} {}",
            s(r, "name"),
            s(r, "region"),
            s(r, "cell"),
            s(r, "status"),
            format!("{}/{}", n(r, "usedMemoryMb"), n(r, "memoryMb")),
            format!("{}/{}", n(r, "usedCpuMillis"), n(r, "cpuMillis")),
            format!("{}/{}", n(r, "allocations"), n(r, "slots")),
            s(r, "lastSeenAt").chars().take(19).collect::<String>(),
            s(r, "agentVersion"),
        );
    }
}

//! `rhone runners …`: operator commands about runner hosts. `credentials NAME` prints what
//! runner `NAME` is configured with, derived from the operator's runner key
//! (`RHONE_RUNNER_KEY` or `RHONE_RUNNER_KEY_FILE`, as the API and the worker read it).

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use rhone_runner_protocol::credentials::token_hash;
use serde_json::json;

#[derive(Subcommand)]
pub enum RunnersCmd {
    /// Print the variables runner NAME needs to take calls from this control plane and
    /// report to it: RHONE_RUNNER_REPORT_TOKEN (a secret: hand it to that host only) and
    /// RHONE_RUNNER_CALL_TOKEN_SHA256. Reads RHONE_RUNNER_KEY or RHONE_RUNNER_KEY_FILE.
    Credentials {
        /// The runner's name (RHONE_RUNNER_NAME on its host).
        name: String,
    },
}

pub fn run(cmd: RunnersCmd, json_out: bool) -> Result<()> {
    match cmd {
        RunnersCmd::Credentials { name } => {
            rhone_core::Name::parse(&name).with_context(|| format!("runner name {name:?}"))?;
            let env: BTreeMap<String, String> = std::env::vars().collect();
            let Some(key) = crate::serve::runner_key(&env)? else {
                bail!(
                    "set RHONE_RUNNER_KEY (or RHONE_RUNNER_KEY_FILE) to the key the API and the worker use"
                );
            };
            let report = key.report_token(&name);
            let call_hash = token_hash(key.call_token(&name).expose());
            if json_out {
                println!(
                    "{}",
                    json!({
                        "RHONE_RUNNER_NAME": name,
                        "RHONE_RUNNER_REPORT_TOKEN": report.expose(),
                        "RHONE_RUNNER_CALL_TOKEN_SHA256": call_hash,
                    })
                );
            } else {
                println!("RHONE_RUNNER_NAME={name}");
                println!("RHONE_RUNNER_REPORT_TOKEN={}", report.expose());
                println!("RHONE_RUNNER_CALL_TOKEN_SHA256={call_hash}");
            }
            Ok(())
        }
    }
}

//! The GraphQL client the CLI commands share, and the credentials `rhone login` stores.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Where the CLI finds the API and its token: `$RHONE_CONFIG`, else
/// `$XDG_CONFIG_HOME/rhone/credentials.json`, else `~/.config/rhone/credentials.json`.
/// `RHONE_API` and `RHONE_TOKEN` override the file.
#[derive(Serialize, Deserialize)]
pub struct Credentials {
    pub api: String,
    pub token: String,
}

fn credentials_path() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("RHONE_CONFIG") {
        return Ok(PathBuf::from(p));
    }
    let base = match std::env::var_os("XDG_CONFIG_HOME") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?).join(".config"),
    };
    Ok(base.join("rhone").join("credentials.json"))
}

impl Credentials {
    pub fn load() -> Result<Credentials> {
        let path = credentials_path()?;
        let mut creds = match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid credentials JSON", path.display()))?,
            Err(_) => Credentials {
                api: String::new(),
                token: String::new(),
            },
        };
        if let Ok(api) = std::env::var("RHONE_API") {
            creds.api = api;
        }
        if let Ok(token) = std::env::var("RHONE_TOKEN") {
            creds.token = token;
        }
        if creds.api.is_empty() || creds.token.is_empty() {
            bail!(
                "not logged in: run `rhone login --api URL --token TOKEN` (rhone dev prints both), or set RHONE_API and RHONE_TOKEN"
            );
        }
        Ok(creds)
    }

    pub fn save(&self) -> Result<PathBuf> {
        let path = credentials_path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        crate::dev::write_private(&path, &serde_json::to_string_pretty(self)?)?;
        Ok(path)
    }

    /// Saves credentials unless some are there already; true if it wrote them.
    pub fn save_if_absent(api: &str, token: &str) -> Result<bool> {
        if credentials_path()?.exists() {
            return Ok(false);
        }
        Credentials {
            api: api.to_owned(),
            token: token.to_owned(),
        }
        .save()?;
        Ok(true)
    }
}

pub struct Api {
    http: reqwest::Client,
    creds: Credentials,
}

impl Api {
    pub fn new(creds: Credentials) -> Result<Api> {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(30))
            .build()?;
        Ok(Api { http, creds })
    }

    /// Runs one GraphQL document; an error in the answer becomes `CODE: message`.
    pub async fn call(&self, query: &str, variables: Value) -> Result<Value> {
        let url = format!("{}/graphql", self.creds.api.trim_end_matches('/'));
        let resp = self
            .http
            .post(&url)
            .bearer_auth(&self.creds.token)
            .json(&json!({ "query": query, "variables": variables }))
            .send()
            .await
            .with_context(|| {
                format!("cannot reach the Rhone API at {url} (is `rhone dev` running?)")
            })?;
        let status = resp.status();
        let body: Value = resp
            .json()
            .await
            .with_context(|| format!("the API at {url} answered {status} without JSON"))?;
        if let Some(errors) = body
            .get("errors")
            .and_then(Value::as_array)
            .filter(|e| !e.is_empty())
        {
            let lines: Vec<String> = errors
                .iter()
                .map(|e| {
                    let code = e
                        .pointer("/extensions/code")
                        .and_then(Value::as_str)
                        .unwrap_or("ERROR");
                    let msg = e
                        .get("message")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    format!("{code}: {msg}")
                })
                .collect();
            bail!("{}", lines.join("\n"));
        }
        Ok(body.get("data").cloned().unwrap_or(Value::Null))
    }
}

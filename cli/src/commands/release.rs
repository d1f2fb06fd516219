//! `rhone promote`, `rhone rollback` and `rhone route`: move an environment's route and show
//! who serves a host.

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::{
    OP_FIELDS,
    follow::{OnWait, follow, last_evidence, stopped_at},
    status_of,
};
use crate::client::Api;

/// Which promotion-machine command ran, for its messages.
#[derive(Clone, Copy)]
enum Move {
    Promotion,
    Rollback,
}

impl Move {
    fn noun(self) -> &'static str {
        match self {
            Move::Promotion => "promotion",
            Move::Rollback => "rollback",
        }
    }
}

pub async fn promote(
    api: &Api,
    deployment: &str,
    env_id: &str,
    instances: u32,
    json_out: bool,
) -> Result<()> {
    let q = format!(
        "mutation($d: UUID!, $e: UUID!, $n: Int) {{ promote(deploymentId: $d, environmentId: $e, instances: $n) {{ {OP_FIELDS} }} }}"
    );
    let d = api
        .call(&q, json!({ "d": deployment, "e": env_id, "n": instances }))
        .await?;
    finish(api, &d["promote"], Move::Promotion, json_out).await
}

pub async fn rollback(api: &Api, env_id: &str, to: Option<&str>, json_out: bool) -> Result<()> {
    let q = format!(
        "mutation($e: UUID!, $to: UUID) {{ rollback(environmentId: $e, to: $to) {{ {OP_FIELDS} }} }}"
    );
    let d = api.call(&q, json!({ "e": env_id, "to": to })).await?;
    finish(api, &d["rollback"], Move::Rollback, json_out).await
}

/// Follows the operation to its end, then says where the route points or why it did not
/// move.
async fn finish(api: &Api, op: &Value, what: Move, json_out: bool) -> Result<()> {
    let op = follow(api, op, json_out, OnWait::Keep).await?;
    let id = op["id"].as_str().unwrap_or("?");
    let status = status_of(&op);
    if json_out {
        println!("{}", serde_json::to_string_pretty(&op)?);
    } else if status == "succeeded" {
        println!("{}", serving(&op, what));
    }
    if status != "succeeded" {
        let reason = op["error"].as_str().unwrap_or("no reason recorded");
        if op["currentStage"] == "rolled_back" {
            bail!("{} {id} rolled back: {reason}", what.noun());
        }
        bail!(
            "{} {id} is {status} at {}: {reason}",
            what.noun(),
            stopped_at(&op)
        );
    }
    Ok(())
}

/// `promoted: http://web.shop.acme.rhone.localhost:8081/ (epoch 3, deployment …)`, or the
/// route key where no stage recorded a URL.
fn serving(op: &Value, what: Move) -> String {
    let verb = match what {
        Move::Promotion => "promoted",
        Move::Rollback => "rolled back",
    };
    let text =
        |key| last_evidence(op, key).map(|v| v.as_str().map_or(v.to_string(), str::to_owned));
    let epoch = text("epoch").unwrap_or_else(|| "?".to_owned());
    let deployment = op["targetId"].as_str().unwrap_or("?");
    let place = match (text("url"), text("route_key")) {
        (Some(url), _) => url,
        (None, Some(key)) => key,
        (None, None) => "(no route key recorded)".to_owned(),
    };
    format!("{verb}: {place} serves deployment {deployment} at epoch {epoch}")
}

pub async fn route(api: &Api, host: &str, json_out: bool) -> Result<()> {
    let d = api
        .call(
            "query($h: String!) { routeOwner(host: $h) { routeKey epoch artifactDigest operationId updatedAt \
             deployment { id stage promotedFrom } environment { id name kind } } }",
            json!({ "h": host }),
        )
        .await?;
    let owner = &d["routeOwner"];
    if owner.is_null() {
        bail!("no route owner for {host} is visible to you");
    }
    if json_out {
        println!("{}", serde_json::to_string_pretty(owner)?);
        return Ok(());
    }
    let f = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_owned(),
        v => v.to_string(),
    };
    let promoted = match owner["deployment"]["promotedFrom"].as_str() {
        Some(p) => format!(" (promoted from {p})"),
        None => String::new(),
    };
    println!(
        "route        {}\nepoch        {}\ndeployment   {}{promoted}\nartifact     {}\nenvironment  {} ({})\noperation    {}\nupdated      {}",
        f(&owner["routeKey"]),
        f(&owner["epoch"]),
        f(&owner["deployment"]["id"]),
        f(&owner["artifactDigest"]),
        f(&owner["environment"]["name"]),
        f(&owner["environment"]["kind"]).to_lowercase(),
        f(&owner["operationId"]),
        f(&owner["updatedAt"]),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serving_prefers_the_url() {
        let op = |evidence: Value| {
            json!({ "targetId": "d1", "stages": [
                { "evidence": { "route_key": "web.example", "from_epoch": 2 } },
                { "evidence": evidence },
            ] })
        };
        assert_eq!(
            serving(
                &op(json!({ "epoch": 3, "url": "http://web.example:8081/" })),
                Move::Promotion
            ),
            "promoted: http://web.example:8081/ serves deployment d1 at epoch 3"
        );
        assert_eq!(
            serving(&op(json!({ "epoch": 3 })), Move::Rollback),
            "rolled back: web.example serves deployment d1 at epoch 3"
        );
    }
}

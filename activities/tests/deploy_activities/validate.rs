//! Each validation gate on a real build of the example: all clear, a stale fingerprinted
//! file, a cold state change against the environment's current deployment, migrations, and
//! missing secrets and runtime services (cleared once bound).

use anyhow::{Context, Result};
use chrono::Utc;
use rhone_activities::deploy::validate_deployment;
use rhone_schema::entity::{deployment, runtime_service_binding, secret};
use rhone_schema::new_id;
use rhone_workflows::activities::{Built, ValidateInput, Validation};
use sea_orm::{ActiveModelTrait, ActiveValue::Set, EntityTrait, IntoActiveModel};

use super::deploy_support::{self, Fixture, change_counter_codec, replace_in};

async fn validate(
    fx: &Fixture,
    d: deploy_support::Deployment,
    built: &Built,
) -> Result<Validation> {
    let input = ValidateInput {
        operation_id: d.operation_id,
        deployment_id: d.id,
        environment_id: fx.env.id,
        digest: built.digest.clone(),
    };
    Ok(validate_deployment(&fx.db, &fx.config, &input).await?)
}

fn failed_gates(v: &Validation) -> Vec<&str> {
    v.gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| g.gate.as_str())
        .collect()
}

#[tokio::test]
async fn an_all_clear_deploy_has_no_blockers() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let (d, built) = fx.deploy(&repo).await?;
    let v = validate(&fx, d, &built?).await?;
    assert_eq!(
        (v.fatal.len(), v.blockers.len(), failed_gates(&v).len()),
        (0, 0, 0),
        "{v:#?}"
    );
    assert_eq!(v.gates.len(), 5);
    assert_eq!(v.gates[0].evidence["assets"], 2);
    assert_eq!(v.gates[1].evidence["impact"]["impact"], "warm");
    Ok(())
}

#[tokio::test]
async fn a_tampered_fingerprinted_file_is_fatal() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        let command =
            "python3 build.py && for f in dist/public/app.*.css; do printf tampered >> $f; done";
        replace_in(
            &dir.join("rhone.toml"),
            "command = \"python3 build.py\"",
            &format!("command = '{command}'"),
        )
    })?;
    let (d, built) = fx.deploy(&repo).await?;
    let built = built.context("a stale asset does not fail the build")?;
    let log = fx.build_log(d).await?;
    assert!(
        log.contains("[rhone] warning: stale generated artifact app."),
        "{log}"
    );
    let v = validate(&fx, d, &built).await?;
    assert_eq!(failed_gates(&v), ["generated_artifacts_current"]);
    let [fatal] = v.fatal.as_slice() else {
        panic!("one fatal: {v:#?}")
    };
    assert!(
        fatal.starts_with("stale generated artifact public/app.css: manifest says app.58e68335.css, content hashes to "),
        "{fatal}"
    );
    Ok(())
}

#[tokio::test]
async fn a_cold_state_change_needs_approval() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let (first, built) = fx.deploy(&repo).await?;
    let first_digest = built?.digest;
    let mut row = deployment::Entity::find_by_id(first.id)
        .one(&fx.db)
        .await?
        .context("deployment")?
        .into_active_model();
    row.stage = Set("preview_ready".into());
    row.update(&fx.db).await?;

    let repo = change_counter_codec(&repo)?;
    let (second, built) = fx.deploy(&repo).await?;
    let v = validate(&fx, second, &built?).await?;
    assert_eq!(failed_gates(&v), ["vango_state_impact"]);
    let [blocker] = v.blockers.as_slice() else {
        panic!("one blocker: {v:#?}")
    };
    assert!(blocker.approvable);
    assert_eq!(
        blocker.reason,
        format!(
            "cold deploy: the state schema changes the codec of counter.count compared with \
             deployment {} ({first_digest}); live sessions lose that state; approve to proceed",
            first.id
        )
    );
    assert_eq!(
        v.gates[1].evidence["compared_with"]["via"],
        "preview_ready_deployment"
    );
    Ok(())
}

#[tokio::test]
async fn migrations_block_the_preview() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        std::fs::create_dir_all(dir.join("migrations"))?;
        std::fs::write(
            dir.join("migrations/0001_counts.sql"),
            "CREATE TABLE counts (n int);\n",
        )?;
        let toml = dir.join("rhone.toml");
        let command = "python3 build.py && cp -r migrations dist/migrations";
        replace_in(
            &toml,
            "command = \"python3 build.py\"",
            &format!("command = '{command}'"),
        )?;
        replace_in(
            &toml,
            "[wake]",
            "[migrations]\ndir = \"migrations\"\n\n[wake]",
        )
    })?;
    let (d, built) = fx.deploy(&repo).await?;
    let v = validate(&fx, d, &built?).await?;
    assert_eq!(failed_gates(&v), ["db_impact"]);
    let [blocker] = v.blockers.as_slice() else {
        panic!("one blocker: {v:#?}")
    };
    assert!(!blocker.approvable);
    assert_eq!(
        blocker.reason,
        format!(
            "migration blocks preview: 1 migration file(s) (migrations/0001_counts.sql) and \
             environment {} has no database of its own to apply them to; bind one \
             (`rhone databases bind`), then retry",
            fx.env.name
        )
    );
    assert_eq!(
        v.gates[2].evidence["migrations"][0]["path"],
        "migrations/0001_counts.sql"
    );
    Ok(())
}

#[tokio::test]
async fn missing_secrets_and_services_block_until_bound() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        replace_in(
            &dir.join("rhone.toml"),
            "[wake]",
            "[secrets]\nrequired = [\"STRIPE_API_KEY\", \"SESSION_SECRET\"]\n\n\
             [services]\nrequired = [\"session_store\"]\n\n[wake]",
        )
    })?;
    let (d, built) = fx.deploy(&repo).await?;
    let built = built?;
    let now = Utc::now();
    let set_secret = |name: &str| secret::ActiveModel {
        id: Set(new_id()),
        environment_id: Set(fx.env.id),
        name: Set(name.to_owned()),
        ciphertext: Set(b"sealed".to_vec()),
        nonce: Set(vec![0; 12]),
        version: Set(1),
        set_by: Set("user:test".into()),
        key_id: Set("test".into()),
        created_at: Set(now),
        updated_at: Set(now),
    };
    set_secret("SESSION_SECRET").insert(&fx.db).await?;
    let binding = runtime_service_binding::ActiveModel {
        id: Set(new_id()),
        environment_id: Set(fx.env.id),
        service: Set("session_store".into()),
        status: Set("provisioning".into()),
        config: Set(serde_json::json!({})),
        created_at: Set(now),
        // Not probed: written as a provisioner would.
        ..Default::default()
    }
    .insert(&fx.db)
    .await?;

    let v = validate(&fx, d, &built).await?;
    assert_eq!(failed_gates(&v), ["secrets_bound", "providers_bound"]);
    let reasons: Vec<(&str, bool)> = v
        .blockers
        .iter()
        .map(|b| (b.reason.as_str(), b.approvable))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "missing secret STRIPE_API_KEY on environment preview: set it, then retry",
                false
            ),
            (
                "runtime service session_store is not bound on environment preview: its binding \
                 is provisioning, not ready; bind it, then retry",
                false
            ),
        ]
    );
    // Once both are bound, validating again clears the deploy.
    set_secret("STRIPE_API_KEY").insert(&fx.db).await?;
    let mut binding = binding.into_active_model();
    binding.status = Set("ready".into());
    binding.update(&fx.db).await?;
    let v = validate(&fx, d, &built).await?;
    assert!(v.blockers.is_empty() && v.fatal.is_empty(), "{v:#?}");
    Ok(())
}

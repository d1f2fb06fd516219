//! The deploy activities on real git, a real Python build of `examples/counter` committed to
//! a fresh repository per test, a local artifact store and a SQLite control DB: cloning,
//! building (log, limits, failures, digest check); each validation gate (`validate`); and
//! the activities through a real Temporal worker as standalone activities (`temporal`).

mod deploy_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use deploy_support::{Fixture, git, replace_in};
use rhone_activities::deploy::{DeployConfig, DeployError, clone_source};
use rhone_manifest::ArtifactManifest;
use rhone_schema::entity::{artifact, deployment};
use rhone_store::{ArtifactStore, Digest, archive};
use sea_orm::EntityTrait;

#[path = "deploy_activities/temporal.rs"]
mod temporal;
#[path = "deploy_activities/validate.rs"]
mod validate;

#[tokio::test]
async fn clone_resolves_branches_tags_and_shas() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    git(&repo.path, &["tag", "v1"])?;
    let short = &repo.head[..12];
    for git_ref in ["", "HEAD", "main", "v1", short] {
        let source = Fixture::source(&repo, git_ref);
        let d = fx.deployment(&source).await?;
        let input = Fixture::clone_input(d, &source);
        let cloned = clone_source(&fx.config, &input).await?;
        assert_eq!(cloned.commit_sha, repo.head, "ref {git_ref:?}");
        // A retry finds the clone; a partial clone left by a killed attempt is cleared.
        let partial = fx
            .config
            .work_dir
            .join(d.id.to_string())
            .join(".src-partial-x");
        std::fs::create_dir_all(&partial)?;
        assert_eq!(clone_source(&fx.config, &input).await?, cloned);
        std::fs::remove_dir_all(fx.config.work_dir.join(d.id.to_string()).join("src"))?;
        assert_eq!(clone_source(&fx.config, &input).await?, cloned);
        assert!(
            !partial.exists(),
            "a partial clone is cleared before cloning again"
        );
    }
    Ok(())
}

#[tokio::test]
async fn unknown_refs_and_repositories_are_final_and_named() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let source = Fixture::source(&repo, "no-such-branch");
    let d = fx.deployment(&source).await?;
    let err = clone_source(&fx.config, &Fixture::clone_input(d, &source))
        .await
        .expect_err("the ref does not exist");
    assert!(err.is_final(), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&source.repository), "{message}");
    assert!(
        message.contains("unknown ref \"no-such-branch\""),
        "{message}"
    );

    let missing = fx.tmp.path().join("nowhere").display().to_string();
    let d = fx.deployment(&source).await?;
    let source = rhone_workflows::activities::SourceSpec {
        repository: missing.clone(),
        git_ref: "main".into(),
    };
    let err = clone_source(&fx.config, &Fixture::clone_input(d, &source))
        .await
        .expect_err("the repository does not exist");
    assert!(err.is_final(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with(&format!(
            "cannot clone {missing} at main: git clone exited with status 128: fatal:"
        )),
        "{message}"
    );
    Ok(())
}

/// A builder whose operator has not allowed local repositories refuses to clone a path on
/// its host, even from a workflow started around the API, and names the setting; git is
/// then allowed no file transport either.
#[tokio::test]
async fn a_local_repository_is_refused_where_the_operator_has_not_allowed_it() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let config = DeployConfig {
        local_repositories: false,
        ..fx.config.clone()
    };
    for repository in [
        repo.path.display().to_string(),
        format!("file://{}", repo.path.display()),
    ] {
        let source = rhone_workflows::activities::SourceSpec {
            repository: repository.clone(),
            git_ref: "main".into(),
        };
        let d = fx.deployment(&source).await?;
        let err = clone_source(&config, &Fixture::clone_input(d, &source))
            .await
            .expect_err("a local repository is refused");
        assert!(err.is_final(), "{err:?}");
        let message = err.to_string();
        assert!(
            message.contains("is a path on the builder's host")
                && message.contains("RHONE_ALLOW_LOCAL_REPOSITORIES=1"),
            "{message}"
        );
        assert!(
            !fx.config
                .work_dir
                .join(d.id.to_string())
                .join("src")
                .exists(),
            "nothing was cloned for {repository}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn the_example_builds_into_a_stored_and_recorded_artifact() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let (d, built) = fx.deploy(&repo).await?;
    let built = built?;
    let digest = Digest::parse(&built.digest)?;
    let bytes = fx.config.store.get(&digest).await?;
    assert_eq!(bytes.len() as u64, built.size_bytes);

    let dest = fx.tmp.path().join("unpacked");
    archive::unpack(&bytes, &dest, &digest)?;
    let embedded =
        ArtifactManifest::parse(&std::fs::read_to_string(dest.join(".rhone/artifact.json"))?)?;
    assert_eq!(embedded.source.commit_sha, repo.head);
    assert_eq!(embedded.source.build_command, "python3 build.py");
    let names: Vec<(&str, &str, bool)> = embedded
        .assets
        .entries
        .iter()
        .map(|a| (a.source.as_str(), a.fingerprinted.as_str(), a.immutable))
        .collect();
    let vango: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("manifest.json"))?)?;
    assert_eq!(
        names,
        [
            (
                "app.css",
                vango["app.css"].as_str().context("app.css")?,
                true
            ),
            ("app.js", vango["app.js"].as_str().context("app.js")?, true),
        ]
    );
    for asset in &embedded.assets.entries {
        let file = std::fs::read(dest.join("public").join(&asset.fingerprinted))?;
        assert_eq!(rhone_manifest::vango::sha256_hex(&file), asset.sha256);
    }
    let schema = embedded
        .state_schema
        .as_ref()
        .context("the example has a state schema")?;
    assert_eq!(schema.schema.persisted_primitives.len(), 3);

    // Recorded: the artifacts row (with the same manifest) and the deployment's digest.
    let row = artifact::Entity::find_by_id(built.digest.clone())
        .one(&fx.db)
        .await?
        .context("artifact row")?;
    assert_eq!(
        ArtifactManifest::parse(&row.manifest.to_string())?,
        embedded
    );
    assert!(row.store_uri.starts_with("file://"), "{}", row.store_uri);
    let dep = deployment::Entity::find_by_id(d.id)
        .one(&fx.db)
        .await?
        .context("deployment")?;
    assert_eq!(dep.artifact_digest.as_deref(), Some(built.digest.as_str()));
    let log = fx.build_log(d).await?;
    assert!(log.contains("asset  app.css -> public/app."), "{log}");
    assert!(
        log.contains(&format!("[rhone] artifact {} (", built.digest)),
        "{log}"
    );
    assert!(
        !fx.config.work_dir.join(d.id.to_string()).exists(),
        "the checkout is removed"
    );

    // A retried build of the same commit gives the same artifact, as a new log attempt.
    let source = Fixture::source(&repo, "main");
    let again = rhone_activities::deploy::build_artifact(
        &fx.db,
        &fx.config,
        &Fixture::build_input(d, &source, &repo.head),
    )
    .await?;
    assert_eq!(again.digest, built.digest);
    let chunks = rhone_schema::logs::read(&fx.db, d.operation_id.0, 0, 10_000).await?;
    assert_eq!(chunks.first().map(|c| c.attempt), Some(1));
    assert_eq!(chunks.last().map(|c| c.attempt), Some(2));
    Ok(())
}

#[tokio::test]
async fn a_failing_build_names_its_status_and_last_lines() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        let command = "echo compiling; for i in $(seq 1 30); do echo line $i; done; echo boom: syntax error >&2; exit 3";
        replace_in(&dir.join("rhone.toml"), "command = \"python3 build.py\"", &format!("command = '{command}'"))
    })?;
    let (d, built) = fx.deploy(&repo).await?;
    let err = built.expect_err("the build fails");
    assert!(err.is_final(), "{err:?}");
    let message = err.to_string();
    assert!(
        message.starts_with("build command exited with status 3; last lines of the build log:\n"),
        "{message}"
    );
    assert!(
        message.ends_with("line 30\nboom: syntax error"),
        "{message}"
    );
    assert!(
        !message.contains("line 10\n"),
        "only the last 20 lines: {message}"
    );
    let log = fx.build_log(d).await?;
    assert!(log.contains("compiling\nline 1\n"), "{log}");
    assert!(
        log.contains("boom: syntax error\n[rhone] build command exited with status 3\n"),
        "{log}"
    );
    let dep = deployment::Entity::find_by_id(d.id)
        .one(&fx.db)
        .await?
        .context("deployment")?;
    assert_eq!(dep.artifact_digest, None, "nothing recorded");
    Ok(())
}

#[tokio::test]
async fn a_build_past_its_limit_is_killed_with_its_log_capped() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        let toml = dir.join("rhone.toml");
        // A background sleeper holds the output pipe open: it must die with the build.
        let command = "yes 0123456789 | head -c 5000; sleep 60 & sleep 60";
        replace_in(
            &toml,
            "command = \"python3 build.py\"",
            &format!("command = '{command}'\nmax_log_bytes = 1024"),
        )?;
        replace_in(&toml, "timeout_secs = 120", "timeout_secs = 2")
    })?;
    let started = Instant::now();
    let (d, built) = fx.deploy(&repo).await?;
    let err = built.expect_err("the build times out");
    assert!(err.is_final(), "{err:?}");
    assert_eq!(err.to_string(), "build timed out after 2 s");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let log = fx.build_log(d).await?;
    let kept = log.matches("0123456789").count();
    assert!(
        (90..=94).contains(&kept),
        "about 1024 bytes kept, {kept} lines: {log}"
    );
    assert!(
        log.contains("[rhone] build log truncated at 1024 bytes"),
        "{log}"
    );
    assert!(
        log.ends_with("[rhone] build timed out after 2 s; stopped\n"),
        "{log}"
    );
    Ok(())
}

#[tokio::test]
async fn a_malformed_manifest_is_reported_by_line_and_field() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |dir| {
        replace_in(&dir.join("rhone.toml"), "port = 8080", "port = \"eighty\"")
    })?;
    let line = std::fs::read_to_string(repo.path.join("rhone.toml"))?
        .lines()
        .position(|l| l.starts_with("port = "))
        .context("port line")?
        + 1;
    let (_, built) = fx.deploy(&repo).await?;
    let err = built.expect_err("rhone.toml is invalid");
    assert!(err.is_final(), "{err:?}");
    assert!(matches!(err, DeployError::Manifest(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "rhone.toml:{line}:8: run.port: expected an integer between 1 and 65535, found \"eighty\""
        )
    );
    Ok(())
}

#[tokio::test]
async fn a_digest_mismatch_on_read_back_is_final() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let good = fx.deploy(&repo).await?.1?;
    // Another store already holds corrupt bytes under that digest: `put` keeps them.
    let digest = Digest::parse(&good.digest)?;
    let store = ArtifactStore::local(fx.tmp.path().join("corrupt"));
    let ArtifactStore::Local(local) = &store else {
        unreachable!("a local store")
    };
    let path = local.path_of(&digest);
    std::fs::create_dir_all(path.parent().context("parent")?)?;
    std::fs::write(&path, b"not the artifact")?;
    let config = DeployConfig {
        store,
        ..fx.config.clone()
    };
    let (d, built) = fx.deploy_with(&config, &repo).await?;
    let err = built.expect_err("the read-back does not match");
    assert!(err.is_final(), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "build digest mismatch: stored {}, read back {}",
            good.digest,
            Digest::of(b"not the artifact")
        )
    );
    let dep = deployment::Entity::find_by_id(d.id)
        .one(&fx.db)
        .await?
        .context("deployment")?;
    assert_eq!(dep.artifact_digest, None, "nothing recorded");
    Ok(())
}

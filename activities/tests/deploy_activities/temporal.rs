//! The deploy activities through a real Temporal dev server and a real worker, started as
//! standalone activities (no deploy workflow is needed to exercise the wrappers): results
//! come back typed, and a refusal comes back non-retryable with its message, after one
//! attempt.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rhone_activities::temporal::{self, Client, TemporalConfig};
use rhone_activities::{Worker, WorkerConfig, WorkerHandle};
use rhone_schema::entity::deployment;
use rhone_store::Digest;
use rhone_workflows::activities::{DeployActivities, SourceSpec};
use sea_orm::EntityTrait;
use temporalio_client::{ActivityStartOptions, errors::ActivityResultError};
use temporalio_common::error::IncomingError;
use temporalio_common::{ActivityDefinition, RetryPolicy};

use super::deploy_support::Fixture;

struct Running {
    client: Client,
    queue: String,
    worker: WorkerHandle,
}

async fn start_worker(fx: &Fixture, test: &str) -> Result<Running> {
    let server = rhone_testkit::temporal::server().await?;
    let client = temporal::connect(&TemporalConfig {
        address: Some(server.target.clone()),
        namespace: Some(server.namespace.clone()),
    })
    .await?;
    let queue = rhone_testkit::unique_name(test);
    let config = WorkerConfig {
        task_queue: queue.clone(),
        deploy: fx.config.clone(),
        ..WorkerConfig::default()
    };
    let worker = Worker::spawn(config, client.clone(), fx.db.clone())?;
    Ok(Running {
        client,
        queue,
        worker,
    })
}

impl Running {
    /// Starts `activity` as a standalone activity (at most 3 attempts) and waits for it.
    async fn run<A>(&self, activity: A, input: A::Input) -> Result<A::Output>
    where
        A: ActivityDefinition,
    {
        let id = rhone_testkit::unique_name(&self.queue);
        let options = ActivityStartOptions::with_start_to_close_timeout(
            self.queue.clone(),
            id,
            Duration::from_secs(120),
        )
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_millis(100))
                .maximum_attempts(3)
                .build(),
        )
        .build();
        let handle = self.client.start_activity(activity, input, options).await?;
        Ok(handle.result().await?)
    }

    async fn stop(self) -> Result<()> {
        tokio::time::timeout(Duration::from_secs(30), self.worker.shutdown())
            .await
            .context("worker shutdown")??;
        Ok(())
    }
}

#[tokio::test]
async fn clone_and_build_run_through_a_temporal_worker() -> Result<()> {
    let fx = Fixture::new().await?;
    let repo = fx.repo("repo", |_| Ok(()))?;
    let running = start_worker(&fx, "deploy_activities_through_temporal").await?;
    let source = Fixture::source(&repo, "main");
    let d = fx.deployment(&source).await?;

    let cloned = running
        .run(
            DeployActivities::clone_source,
            Fixture::clone_input(d, &source),
        )
        .await?;
    assert_eq!(cloned.commit_sha, repo.head);
    let input = Fixture::build_input(d, &source, &cloned.commit_sha);
    let built = running.run(DeployActivities::build_artifact, input).await?;
    fx.config.store.get(&Digest::parse(&built.digest)?).await?;
    let dep = deployment::Entity::find_by_id(d.id)
        .one(&fx.db)
        .await?
        .context("deployment")?;
    assert_eq!(dep.artifact_digest.as_deref(), Some(built.digest.as_str()));
    let log = fx.build_log(d).await?;
    assert!(log.contains("asset  app.css -> public/app."), "{log}");

    // A refusal is final: one attempt, and its message intact.
    let bad = SourceSpec {
        git_ref: "no-such-branch".into(),
        ..source.clone()
    };
    let err = running
        .run(
            DeployActivities::clone_source,
            Fixture::clone_input(d, &bad),
        )
        .await
        .expect_err("the ref does not exist");
    let (non_retryable, message) = application_failure(&err)?;
    assert!(non_retryable, "{message}");
    assert!(
        message.contains("unknown ref \"no-such-branch\""),
        "{message}"
    );
    running.stop().await
}

/// Whether the activity's application failure is non-retryable, and its message.
fn application_failure(err: &anyhow::Error) -> Result<(bool, String)> {
    let Some(ActivityResultError::ActivityFailed(failure)) = err.downcast_ref() else {
        bail!("not an activity failure: {err:?}");
    };
    let mut current = Some(failure);
    while let Some(e) = current {
        if let IncomingError::Application(app) = e {
            let message = e.failure().message.clone();
            return Ok((app.is_non_retryable(), message));
        }
        current = e.cause();
    }
    bail!("no application failure in {failure:?}")
}

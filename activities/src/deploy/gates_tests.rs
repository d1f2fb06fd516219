//! Table tests of the gate decision: one `check` per case, comparing a plain-text rendering
//! of the whole `Validation`.

use super::*;
use rhone_manifest::artifact::{
    AppSubset, ArtifactAssets, ArtifactStateSchema, MigrationFile, SourceFacts,
};
use rhone_manifest::vango::PersistedPrimitive;
use rhone_manifest::{ARTIFACT_FORMAT_VERSION, AppManifest};

const HASH: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// A schema from `id:codec` entries (persisted).
fn schema(spec: &str) -> StateSchema {
    StateSchema {
        schema_version: 1.into(),
        persisted_primitives: spec
            .split_whitespace()
            .map(|e| {
                let (id, codec) = e.split_once(':').unwrap_or((e, "v1"));
                PersistedPrimitive {
                    id: id.into(),
                    codec_fingerprint: codec.into(),
                    persisted: true,
                }
            })
            .collect(),
        session_keys: Vec::new(),
        schema_hash: HASH.into(),
    }
}

fn manifest(secrets: &str, services: &str) -> ArtifactManifest {
    let quote = |list: &str| {
        list.split_whitespace()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = format!(
        "[build]\ncommand = \"make\"\n[run]\ncommand = \"./server\"\n\
         [secrets]\nrequired = [{}]\n[services]\nrequired = [{}]\n",
        quote(secrets),
        quote(services)
    );
    let app = AppManifest::parse(&text).unwrap_or_else(|e| panic!("{e}"));
    ArtifactManifest {
        format_version: ARTIFACT_FORMAT_VERSION,
        app: AppSubset::from(&app),
        assets: ArtifactAssets {
            dir: "public".into(),
            manifest: "manifest.json".into(),
            entries: Vec::new(),
        },
        state_schema: Some(ArtifactStateSchema {
            path: "vango_state_schema.json".into(),
            schema: schema("count:int"),
        }),
        migrations: Vec::new(),
        source: SourceFacts {
            repository: "/srv/git/app".into(),
            git_ref: "main".into(),
            commit_sha: "c".repeat(40),
            build_command: "make".into(),
        },
    }
}

struct Case {
    manifest: ArtifactManifest,
    archive: ArchiveFacts,
    current: Option<CurrentDeployment>,
    secrets: &'static str,
    services: &'static [(&'static str, &'static str)],
    database: Option<&'static str>,
}

fn case() -> Case {
    Case {
        manifest: manifest("", ""),
        archive: ArchiveFacts {
            assets: 2,
            ..Default::default()
        },
        current: None,
        secrets: "",
        services: &[],
        database: None,
    }
}

fn current(spec: Option<&str>) -> Option<CurrentDeployment> {
    Some(CurrentDeployment {
        deployment_id: Uuid::nil(),
        digest: "sha256:prev".into(),
        via: "route_owner",
        schema: spec.map(schema),
    })
}

#[track_caller]
fn check(case: Case, expected: &str) {
    let facts = Facts {
        manifest: &case.manifest,
        archive: case.archive,
        current: case.current,
        environment: "preview".into(),
        secrets: case.secrets.split_whitespace().map(String::from).collect(),
        services: case
            .services
            .iter()
            .map(|(s, st)| ((*s).to_owned(), (*st).to_owned()))
            .collect(),
        database: case.database.map(str::to_owned),
    };
    let v = decide(&facts);
    let mut lines = Vec::new();
    let failed: Vec<&str> = v
        .gates
        .iter()
        .filter(|g| !g.passed)
        .map(|g| g.gate.as_str())
        .collect();
    let failed = if failed.is_empty() {
        "none".to_owned()
    } else {
        failed.join(" ")
    };
    lines.push(format!("failed gates: {failed}"));
    lines.extend(v.fatal.iter().map(|f| format!("fatal: {f}")));
    for b in &v.blockers {
        let kind = if b.approvable { "approvable" } else { "fix" };
        lines.push(format!("{kind} {}: {}", b.gate, b.reason));
    }
    assert_eq!(v.gates.len(), 5, "every gate is reported");
    assert_eq!(lines.join("\n"), expected.trim());
}

#[test]
fn all_clear() {
    check(case(), "failed gates: none");
    let mut c = case();
    c.manifest = manifest("API_KEY", "session_store");
    c.secrets = "API_KEY OTHER";
    c.services = &[("session_store", "ready")];
    c.current = current(Some("count:int"));
    check(c, "failed gates: none");
}

#[test]
fn stale_generated_artifacts_are_fatal() {
    let mut c = case();
    c.archive.stale = vec![
        StaleAsset {
            source: "app.css".into(),
            fingerprinted: "app.58e68335.css".into(),
            reason: StaleReason::DigestMismatch {
                sha256: format!("deadbeef{}", "0".repeat(56)),
            },
        },
        StaleAsset {
            source: "app.js".into(),
            fingerprinted: "app.0123abcd.js".into(),
            reason: StaleReason::Unreadable {
                error: "No such file or directory (os error 2)".into(),
            },
        },
    ];
    c.archive.manifest_mismatch = Some("differs".into());
    check(
        c,
        r#"
failed gates: generated_artifacts_current
fatal: stale generated artifact public/app.css: manifest says app.58e68335.css, content hashes to deadbeef
fatal: stale generated artifact public/app.js: manifest says app.0123abcd.js, which cannot be read (No such file or directory (os error 2))
fatal: artifact manifest mismatch: differs
"#,
    );
}

#[test]
fn state_impact_is_warm_or_cold_against_the_current_deployment() {
    // Adding a primitive, or no current deployment, or one without a schema: warm.
    for (now, next) in [
        (Some("count:int"), "count:int extra:v1"),
        (None, "count:int"),
    ] {
        let mut c = case();
        c.current = current(now);
        c.manifest.state_schema = Some(ArtifactStateSchema {
            path: "vango_state_schema.json".into(),
            schema: schema(next),
        });
        check(c, "failed gates: none");
    }
    let mut c = case();
    c.current = current(Some("count:int gone:v1"));
    c.manifest.state_schema = Some(ArtifactStateSchema {
        path: "vango_state_schema.json".into(),
        schema: schema("count:str"),
    });
    check(
        c,
        "failed gates: vango_state_impact\n\
         approvable vango_state_impact: cold deploy: the state schema removes persisted gone \
         and changes the codec of count compared with deployment \
         00000000-0000-0000-0000-000000000000 (sha256:prev); live sessions lose that state; \
         approve to proceed",
    );
    // An artifact without a schema drops every persisted primitive.
    let mut c = case();
    c.current = current(Some("count:int"));
    c.manifest.state_schema = None;
    check(
        c,
        "failed gates: vango_state_impact\n\
         approvable vango_state_impact: cold deploy: the state schema removes persisted count \
         compared with deployment 00000000-0000-0000-0000-000000000000 (sha256:prev); live \
         sessions lose that state; approve to proceed",
    );
}

#[test]
fn migrations_need_a_database_of_the_environments_own() {
    let mut c = case();
    c.manifest.migrations = ["0001_init.sql", "0002_add.sql"]
        .map(|f| MigrationFile {
            path: format!("migrations/{f}"),
            sha256: "a".repeat(64),
        })
        .to_vec();
    check(
        c,
        "failed gates: db_impact\n\
         fix db_impact: migration blocks preview: 2 migration file(s) (migrations/0001_init.sql, \
         migrations/0002_add.sql) and environment preview has no database of its own to apply \
         them to; bind one (`rhone databases bind`), then retry",
    );
}

#[test]
fn migrations_with_a_database_pass_and_ask_for_a_migration() {
    let mut c = case();
    c.manifest.migrations = vec![MigrationFile {
        path: "migrations/0001_init.sql".into(),
        sha256: "a".repeat(64),
    }];
    c.database = Some("env_x");
    let facts = Facts {
        manifest: &c.manifest,
        archive: c.archive,
        current: None,
        environment: "preview".into(),
        secrets: Default::default(),
        services: Default::default(),
        database: c.database.map(str::to_owned),
    };
    let v = decide(&facts);
    assert!(v.blockers.is_empty(), "{v:?}");
    assert!(v.migrate);
    let gate = v.gates.iter().find(|g| g.gate == DB_IMPACT);
    assert_eq!(gate.map(|g| &g.evidence["database"]), Some(&json!("env_x")));
    let without = decide(&Facts {
        manifest: &manifest("", ""),
        database: None,
        ..facts
    });
    assert!(!without.migrate, "nothing to migrate");
}

#[test]
fn missing_secrets_and_services_are_named() {
    let mut c = case();
    c.manifest = manifest("API_KEY STRIPE_KEY", "session_store idempotency cache");
    c.secrets = "API_KEY";
    c.services = &[("session_store", "provisioning"), ("cache", "ready")];
    check(
        c,
        "failed gates: secrets_bound providers_bound\n\
         fix secrets_bound: missing secret STRIPE_KEY on environment preview: set it, then retry\n\
         fix providers_bound: runtime service session_store is not bound on environment preview: \
         its binding is provisioning, not ready; bind it, then retry\n\
         fix providers_bound: runtime service idempotency is not bound on environment preview: \
         it has no binding; bind it, then retry",
    );
}

#[test]
fn an_unreachable_binding_is_shown_with_its_probes_reason() {
    const WHY: &str = "redis at redis://***@10.216.1.2:6379: cannot connect: Connection refused";
    const SHOWN: &str =
        "unreachable (redis at redis://***@10.216.1.2:6379: cannot connect: Connection refused)";
    assert_eq!(binding_status("unreachable", Some(WHY)), SHOWN);
    assert_eq!(binding_status("ready", Some("stale")), "ready");
    assert_eq!(binding_status("pending", None), "pending");
    let mut c = case();
    c.manifest = manifest("", "session_store");
    c.services = &[("session_store", SHOWN)];
    check(
        c,
        &format!(
            "failed gates: providers_bound\n\
             fix providers_bound: runtime service session_store is not bound on environment \
             preview: its binding is unreachable ({WHY}), not ready; bind it, then retry"
        ),
    );
}

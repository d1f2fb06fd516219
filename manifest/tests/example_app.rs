//! The example app (`examples/counter`) against this crate: its `rhone.toml` parses, and the
//! output of its real build passes the asset and state checks the deploy pipeline runs.

use std::path::{Path, PathBuf};
use std::process::Command;

use rhone_manifest::vango::{
    StateImpact, StateSchema, VangoAssetManifest, check_assets, classify_state_impact,
};
use rhone_manifest::{AppManifest, ArtifactManifest};

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/counter")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn rhone_toml_parses() {
    let app = AppManifest::parse(&read(&example_dir().join("rhone.toml")))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(app.build.command, "python3 build.py");
    assert_eq!(app.run.command, "python3 server.py");
    assert_eq!(app.run.health_path, "/healthz");
    assert!(
        app.routes
            .idempotent
            .iter()
            .any(|p| p.matches("/actions/increment"))
    );
}

#[test]
fn build_output_passes_the_artifact_checks() {
    let app = AppManifest::parse(&read(&example_dir().join("rhone.toml")))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().expect("a temp dir");
    let build = Command::new("python3")
        .arg(example_dir().join("build.py"))
        .arg(out.path())
        .output()
        .expect("python3 runs");
    let log = String::from_utf8_lossy(&build.stdout) + String::from_utf8_lossy(&build.stderr);
    assert!(
        build.status.success(),
        "build.py failed: {}\n{log}",
        build.status
    );

    let manifest = VangoAssetManifest::parse(&read(&out.path().join(&app.assets.manifest)))
        .unwrap_or_else(|e| panic!("{e}"));
    let assets_dir = out.path().join(&app.assets.dir);
    let entries = check_assets(&manifest, |name| std::fs::read(assets_dir.join(name)))
        .unwrap_or_else(|stale| panic!("stale assets: {stale:?}"));
    let sources: Vec<&str> = entries.iter().map(|e| e.source.as_str()).collect();
    assert_eq!(sources, ["app.css", "app.js"]);
    assert!(
        entries
            .iter()
            .all(|e| e.immutable && e.fingerprinted.contains(&e.sha256[..8]))
    );

    let schema = StateSchema::parse(&read(&out.path().join(&app.state.schema)))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(classify_state_impact(None, &schema), StateImpact::Warm);
    assert_eq!(
        classify_state_impact(Some(&schema), &schema),
        StateImpact::Warm
    );

    // A changed asset after the build is caught.
    let (_, css) = manifest.entries().next().expect("the manifest has app.css");
    std::fs::write(assets_dir.join(css), "body { color: red }").expect("the asset is writable");
    let stale = check_assets(&manifest, |name| std::fs::read(assets_dir.join(name)))
        .expect_err("app.css is stale");
    assert_eq!(stale.len(), 1, "{stale:?}");

    // And the artifact manifest made from all this reads back.
    let artifact = ArtifactManifest {
        format_version: rhone_manifest::ARTIFACT_FORMAT_VERSION,
        app: (&app).into(),
        assets: rhone_manifest::artifact::ArtifactAssets {
            dir: app.assets.dir.clone(),
            manifest: app.assets.manifest.clone(),
            entries,
        },
        state_schema: Some(rhone_manifest::artifact::ArtifactStateSchema {
            path: app.state.schema.clone(),
            schema,
        }),
        migrations: Vec::new(),
        source: rhone_manifest::artifact::SourceFacts {
            repository: "examples/counter".into(),
            git_ref: "HEAD".into(),
            commit_sha: "0".repeat(40),
            build_command: app.build.command.clone(),
        },
    };
    let json = serde_json::to_string(&artifact).expect("serializes");
    assert_eq!(ArtifactManifest::parse(&json).expect("parses"), artifact);
}

//! Immutable assets answered from a real artifact store (a local directory and an S3 API
//! server, s3s-fs): a dist tree laid out as `vango build` (and `examples/counter/build.py`)
//! makes it, packed with `pack_dir` and stored; then 200 with the bytes and the immutable
//! headers, 304 on `If-None-Match`, HEAD, `None` for anything else, one archive read for many
//! concurrent first requests across worker threads, errors that name the artifact, corrupt
//! and missing assets, and eviction of whole artifacts.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Barrier},
};

use anyhow::{Context, Result, bail, ensure};
use hyper::{
    HeaderMap, Method, StatusCode,
    header::{CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH},
};
use rhone_edge::{AssetError, AssetIndex, AssetStats, Assets};
use rhone_manifest::{VangoAssetManifest, artifact::ArtifactAssets, vango::sha256_hex};
use rhone_store::{ArtifactStore, Packed, S3Config, S3Store, SecretKey, StoreError, archive};
use tempfile::TempDir;

use crate::backends::closed_port;

/// Runs each case (`async fn(ArtifactStore) -> Result<()>`) against both stores, as the
/// tests `assets::local::<case>` and `assets::s3::<case>`.
macro_rules! on_both_stores {
    ($($case:ident),+ $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    let dir = tempfile::tempdir()?;
                    super::$case(rhone_store::ArtifactStore::local(dir.path())).await
                }
            )+
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() -> anyhow::Result<()> {
                    super::$case(super::s3_store(stringify!($case)).await?).await
                }
            )+
        }
    };
}

on_both_stores!(
    serves_fingerprinted_assets_with_immutable_headers,
    concurrent_first_requests_read_the_archive_once,
    store_errors_name_the_artifact_and_are_not_remembered,
    corrupt_and_missing_assets_are_errors_the_others_are_served,
    whole_artifacts_are_evicted_least_recently_used_first,
);

const MIB: u64 = 1 << 20;

/// A store in a fresh bucket of its own on the test S3 server.
async fn s3_store(test: &str) -> Result<ArtifactStore> {
    let s3 = rhone_testkit::s3::server().await?;
    // Bucket names allow `-` but not `_`.
    let bucket = rhone_testkit::unique_name(&format!("assets_{test}")).replace('_', "-");
    let store = S3Store::new(&S3Config {
        endpoint: s3.endpoint,
        region: s3.region,
        bucket,
        prefix: "artifacts".into(),
        access_key_id: s3.access_key,
        secret_access_key: SecretKey::new(s3.secret_key),
    })?;
    store
        .client()
        .create_bucket()
        .bucket(store.bucket())
        .send()
        .await
        .with_context(|| format!("creating bucket {}", store.bucket()))?;
    Ok(ArtifactStore::S3(store))
}

/// One asset of a [`Dist`]: its request path and content.
#[derive(Clone)]
struct File {
    path: String,
    content: Vec<u8>,
    content_type: &'static str,
}

/// A build output as `vango build` lays it out, packed, with the artifact manifest's assets.
struct Dist {
    _tmp: TempDir,
    packed: Packed,
    assets: ArtifactAssets,
    css: File,
    js: File,
    png: File,
    /// Reached through a symlink in `public/`.
    font: File,
}

impl Dist {
    fn digest(&self) -> &str {
        self.packed.digest().as_str()
    }

    fn index(&self) -> AssetIndex {
        Assets::index(&self.assets)
    }

    fn fingerprinted(&self) -> [&File; 4] {
        [&self.css, &self.js, &self.png, &self.font]
    }

    /// Bytes of every fingerprinted asset.
    fn asset_bytes(&self) -> u64 {
        self.fingerprinted()
            .iter()
            .map(|f| f.content.len() as u64)
            .sum()
    }
}

/// `dir/name.ext` -> `dir/name.<first 8 hex of sha256>.ext`, the first dot starting the
/// extension, as `examples/counter/build.py` names them.
fn fingerprint(relative: &str, content: &[u8]) -> String {
    let (dir, name) = match relative.rsplit_once('/') {
        Some((d, n)) => (format!("{d}/"), n),
        None => (String::new(), relative),
    };
    let (stem, ext) = name.split_once('.').unwrap_or((name, ""));
    format!("{dir}{stem}.{}.{ext}", &sha256_hex(content)[..8])
}

/// Builds a dist tree whose contents depend on `variant`; `tamper` may change the tree after
/// the artifact manifest was computed and before packing.
fn dist_with(variant: &str, tamper: impl FnOnce(&Path) -> Result<()>) -> Result<Dist> {
    let tmp = tempfile::tempdir()?;
    let dist = tmp.path().join("dist");
    let public = dist.join("public");
    let css = format!("body{{color:#123}} /* {variant} */\n").into_bytes();
    let js = format!("console.log({variant:?});\n").into_bytes();
    let png: Vec<u8> = (0..=255u8).chain(variant.bytes()).collect();
    let font = format!("wOF2 {variant}").into_bytes();
    let island = b"export const island = 1;\n".to_vec();

    let mut manifest = BTreeMap::new();
    let mut write = |source: &str, content: &[u8], hashed: bool| -> Result<String> {
        let name = if hashed {
            fingerprint(source, content)
        } else {
            source.to_owned()
        };
        let target = public.join(&name);
        std::fs::create_dir_all(target.parent().context("a parent")?)?;
        std::fs::write(&target, content)?;
        manifest.insert(source.to_owned(), name.clone());
        Ok(name)
    };
    let css_name = write("app.css", &css, true)?;
    let js_name = write("js/vango.min.js", &js, true)?;
    let png_name = write("img/logo.png", &png, true)?;
    // Vango copies islands unhashed: they are not immutable.
    write("js/islands/counter.js", &island, false)?;
    // A fingerprinted file that is a symlink to a file elsewhere in the tree.
    let font_name = fingerprint("font.woff2", &font);
    std::fs::create_dir_all(dist.join("fonts"))?;
    std::fs::write(dist.join("fonts/font.woff2"), &font)?;
    std::os::unix::fs::symlink("../fonts/font.woff2", public.join(&font_name))?;
    manifest.insert("font.woff2".into(), font_name.clone());

    let manifest_json = serde_json::to_string_pretty(&manifest)?;
    std::fs::write(dist.join("manifest.json"), &manifest_json)?;
    std::fs::write(dist.join("server.py"), b"print('serving')\n")?;
    std::fs::write(dist.join("vango_state_schema.json"), b"{}\n")?;

    // What the deploy pipeline records: every asset checked against its file.
    let vango = VangoAssetManifest::parse(&manifest_json)?;
    let entries = rhone_manifest::check_assets(&vango, |name| std::fs::read(public.join(name)))
        .map_err(|stale| anyhow::anyhow!("stale assets: {stale:?}"))?;
    tamper(&dist)?;
    let packed = archive::pack_dir(&dist)?;
    let file = |name: &str, content: Vec<u8>, content_type| File {
        path: format!("/public/{name}"),
        content,
        content_type,
    };
    Ok(Dist {
        _tmp: tmp,
        packed,
        assets: ArtifactAssets {
            dir: "public".into(),
            manifest: "manifest.json".into(),
            entries,
        },
        css: file(&css_name, css, "text/css; charset=utf-8"),
        js: file(&js_name, js, "text/javascript; charset=utf-8"),
        png: file(&png_name, png, "image/png"),
        font: file(&font_name, font, "font/woff2"),
    })
}

fn dist(variant: &str) -> Result<Dist> {
    dist_with(variant, |_| Ok(()))
}

fn etag(content: &[u8]) -> String {
    format!("\"sha256-{}\"", sha256_hex(content))
}

fn if_none_match(values: &[&str]) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for v in values {
        headers.append(IF_NONE_MATCH, HeaderValue::from_str(v)?);
    }
    Ok(headers)
}

/// A response as the tests look at it.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: impl hyper::header::AsHeaderName) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn request(
    assets: &Assets,
    digest: &str,
    index: &AssetIndex,
    method: Method,
    path: &str,
    headers: &HeaderMap,
) -> Result<Option<Answer>, AssetError> {
    let Some(resp) = assets
        .respond(digest, index, &method, path, headers)
        .await?
    else {
        return Ok(None);
    };
    let (parts, body) = resp.into_parts();
    Ok(Some(Answer {
        status: parts.status,
        headers: parts.headers,
        body: body.to_vec(),
    }))
}

async fn get(assets: &Assets, dist: &Dist, path: &str) -> Result<Answer> {
    let answer = request(
        assets,
        dist.digest(),
        &dist.index(),
        Method::GET,
        path,
        &HeaderMap::new(),
    )
    .await?;
    answer.with_context(|| format!("{path} is an asset"))
}

async fn serves_fingerprinted_assets_with_immutable_headers(store: ArtifactStore) -> Result<()> {
    let dist = dist("one")?;
    store.put(&dist.packed).await?;
    let assets = Assets::new(store, MIB);
    let index = dist.index();
    let digest = dist.digest();
    let none = HeaderMap::new();
    assert_eq!(
        index.paths(),
        {
            let mut paths: Vec<&str> = dist
                .fingerprinted()
                .iter()
                .map(|f| f.path.as_str())
                .collect();
            paths.sort_unstable();
            paths
        },
        "only the fingerprinted files are indexed"
    );

    // 304 needs no bytes: the archive is not read for it.
    let tag = etag(&dist.css.content);
    let answer = request(
        &assets,
        digest,
        &index,
        Method::GET,
        &dist.css.path,
        &if_none_match(&[&tag])?,
    )
    .await?
    .context("an asset")?;
    assert_eq!(answer.status, StatusCode::NOT_MODIFIED);
    assert_eq!(assets.stats().archive_fetches, 0, "a 304 reads nothing");

    for file in dist.fingerprinted() {
        let answer = get(&assets, &dist, &file.path).await?;
        assert_eq!(answer.status, StatusCode::OK, "{}", file.path);
        assert_eq!(answer.body, file.content, "{}", file.path);
        assert_eq!(answer.header(CONTENT_TYPE), Some(file.content_type));
        assert_eq!(
            answer.header(CONTENT_LENGTH),
            Some(file.content.len().to_string().as_str())
        );
        assert_eq!(
            answer.header(CACHE_CONTROL),
            Some("public, max-age=31536000, immutable")
        );
        assert_eq!(answer.header(ETAG), Some(etag(&file.content).as_str()));

        let head = request(&assets, digest, &index, Method::HEAD, &file.path, &none)
            .await?
            .context("HEAD of an asset")?;
        assert_eq!(head.status, StatusCode::OK);
        assert!(head.body.is_empty(), "HEAD has no body");
        assert_eq!(head.headers, answer.headers, "HEAD has GET's headers");
    }

    let css = &dist.css;
    let other = etag(b"something else");
    let weak = format!("W/{tag}");
    let listed = format!("{other}, {tag}");
    for (values, expected) in [
        (vec![tag.as_str()], StatusCode::NOT_MODIFIED),
        (vec![weak.as_str()], StatusCode::NOT_MODIFIED),
        (vec![listed.as_str()], StatusCode::NOT_MODIFIED),
        (vec![other.as_str(), tag.as_str()], StatusCode::NOT_MODIFIED),
        (vec!["*"], StatusCode::NOT_MODIFIED),
        (vec![other.as_str()], StatusCode::OK),
        (vec!["\"garbage"], StatusCode::OK),
    ] {
        for method in [Method::GET, Method::HEAD] {
            let answer = request(
                &assets,
                digest,
                &index,
                method.clone(),
                &css.path,
                &if_none_match(&values)?,
            )
            .await?
            .context("an asset")?;
            assert_eq!(
                answer.status, expected,
                "{method} If-None-Match: {values:?}"
            );
            assert_eq!(answer.header(ETAG), Some(tag.as_str()));
            assert_eq!(
                answer.header(CACHE_CONTROL),
                Some("public, max-age=31536000, immutable")
            );
            if expected == StatusCode::NOT_MODIFIED {
                assert!(answer.body.is_empty());
                assert_eq!(answer.header(CONTENT_LENGTH), None);
            }
        }
    }

    // Not this module's: the caller proxies them to the app, or wakes it.
    for path in [
        "/public/js/islands/counter.js",
        "/public/app.css",
        "/public/app.00000000.css",
        "/manifest.json",
        "/server.py",
        "/fonts/font.woff2",
        "/public/",
        "/",
    ] {
        let answer = request(&assets, digest, &index, Method::GET, path, &none).await?;
        ensure!(answer.is_none(), "{path} is not an immutable asset");
    }
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let answer = request(&assets, digest, &index, method.clone(), &css.path, &none).await?;
        ensure!(answer.is_none(), "{method} is left to the app");
    }
    // An artifact without assets has an empty index.
    let empty = Assets::index(&ArtifactAssets {
        dir: "public".into(),
        manifest: "manifest.json".into(),
        entries: Vec::new(),
    });
    ensure!(
        request(&assets, digest, &empty, Method::GET, &css.path, &none)
            .await?
            .is_none()
    );

    assert_eq!(
        assets.stats(),
        AssetStats {
            archive_fetches: 1,
            fetch_failures: 0,
            cached_artifacts: 1,
            cached_bytes: dist.asset_bytes(),
            evictions: 0,
        }
    );
    Ok(())
}

async fn concurrent_first_requests_read_the_archive_once(store: ArtifactStore) -> Result<()> {
    const N: usize = 8;
    let dist = Arc::new(dist("concurrent")?);
    store.put(&dist.packed).await?;

    // As the edge serves: one current-thread runtime per worker thread, all sharing Assets.
    let assets = Assets::new(store.clone(), MIB);
    let start = Barrier::new(N);
    let done = Barrier::new(N);
    let bodies = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..N)
            .map(|i| {
                let (assets, dist, start, done) = (&assets, &dist, &start, &done);
                scope.spawn(move || -> Result<Vec<u8>> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let file: &File = dist.fingerprinted()[i % 4];
                    start.wait();
                    let answer = runtime.block_on(get(assets, dist, &file.path));
                    // Runtimes stay up until every request is answered: a connection to the
                    // store may live on any of them.
                    done.wait();
                    let answer = answer?;
                    ensure!(answer.status == StatusCode::OK, "{}", answer.status);
                    ensure!(answer.body == file.content, "{} has its content", file.path);
                    Ok(answer.body)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a worker thread panicked"))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    assert_eq!(bodies.len(), N);
    let stats = assets.stats();
    assert_eq!(stats.archive_fetches, 1, "{stats:?}");
    assert_eq!(stats.cached_artifacts, 1);

    // And tasks of a multi-threaded runtime (the future is Send).
    let assets = Assets::new(store, MIB);
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (assets, dist) = (assets.clone(), dist.clone());
            tokio::spawn(async move {
                let file: &File = dist.fingerprinted()[i % 4];
                let answer = get(&assets, &dist, &file.path).await?;
                ensure!(answer.body == file.content, "{} has its content", file.path);
                Ok(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    assert_eq!(assets.stats().archive_fetches, 1);
    Ok(())
}

async fn store_errors_name_the_artifact_and_are_not_remembered(store: ArtifactStore) -> Result<()> {
    let dist = dist("errors")?;
    let assets = Assets::new(store.clone(), MIB);
    let digest = dist.digest();

    // Not stored (yet).
    let err = match get(&assets, &dist, &dist.css.path).await {
        Err(e) => e,
        Ok(answer) => bail!("expected an error, got {}", answer.status),
    };
    let err = err.downcast::<AssetError>()?;
    match &err {
        AssetError::Store { source, .. } if matches!(**source, StoreError::NotFound(_)) => {}
        other => bail!("expected a not-found store error, got {other:?}"),
    }
    assert_eq!(err.digest(), digest);
    assert!(
        err.to_string().contains(digest),
        "the message names the artifact: {err}"
    );
    assert!(!err.is_transient(), "a missing artifact is not transient");
    let stats = assets.stats();
    assert_eq!(
        (
            stats.archive_fetches,
            stats.fetch_failures,
            stats.cached_artifacts
        ),
        (1, 1, 0)
    );

    // The failure is not remembered: once the artifact is there, it is served.
    store.put(&dist.packed).await?;
    let answer = get(&assets, &dist, &dist.css.path).await?;
    assert_eq!(answer.body, dist.css.content);
    assert_eq!(assets.stats().archive_fetches, 2);

    // A digest that is not one is refused before the store is asked.
    let err = request(
        &assets,
        "sha256:nope",
        &dist.index(),
        Method::GET,
        &dist.css.path,
        &HeaderMap::new(),
    )
    .await
    .err()
    .context("an invalid digest is an error")?;
    assert!(matches!(err, AssetError::InvalidDigest { .. }), "{err:?}");
    assert!(err.to_string().contains("sha256:nope"), "{err}");
    assert_eq!(assets.stats().archive_fetches, 2);

    // A store that cannot be reached: worth a retry.
    let unreachable = ArtifactStore::s3(&S3Config {
        endpoint: closed_port().await?,
        region: "us-east-1".into(),
        bucket: "nowhere".into(),
        prefix: String::new(),
        access_key_id: "rhone-test".into(),
        secret_access_key: SecretKey::new("rhone-test-secret"),
    })?;
    let assets = Assets::new(unreachable, MIB);
    let err = get(&assets, &dist, &dist.css.path)
        .await
        .err()
        .context("an unreachable store is an error")?
        .downcast::<AssetError>()?;
    assert!(matches!(err, AssetError::Store { .. }), "{err:?}");
    assert!(err.is_transient(), "{err:?}");
    assert!(err.to_string().contains(digest), "{err}");
    Ok(())
}

async fn corrupt_and_missing_assets_are_errors_the_others_are_served(
    store: ArtifactStore,
) -> Result<()> {
    // Changed after the manifest was made: the name and the manifest no longer match the
    // bytes packed. (The deploy pipeline never packs such a tree; the edge checks anyway.)
    let mut css_name = String::new();
    let mut png_name = String::new();
    let dist = dist_with("corrupt", |dist| {
        for entry in std::fs::read_dir(dist.join("public"))? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("")
                .to_owned();
            if name.starts_with("app.") {
                std::fs::write(&path, b"body{color:red}")?;
                css_name = name;
            }
        }
        for entry in std::fs::read_dir(dist.join("public/img"))? {
            let path = entry?.path();
            png_name = format!(
                "img/{}",
                path.file_name().and_then(|n| n.to_str()).unwrap_or("")
            );
            std::fs::remove_file(path)?;
        }
        Ok(())
    })?;
    store.put(&dist.packed).await?;
    let assets = Assets::new(store, MIB);

    let err = get(&assets, &dist, &dist.css.path)
        .await
        .err()
        .context("a corrupt asset is an error")?
        .downcast::<AssetError>()?;
    match &err {
        AssetError::Corrupt {
            path,
            expected,
            actual,
            ..
        } => {
            assert_eq!(path, &format!("public/{css_name}"));
            assert_eq!(expected, &sha256_hex(&dist.css.content));
            assert_eq!(actual, &sha256_hex(b"body{color:red}"));
        }
        other => bail!("expected a corrupt asset, got {other:?}"),
    }
    assert!(err.to_string().contains(dist.digest()), "{err}");
    assert!(!err.is_transient());

    let err = get(&assets, &dist, &dist.png.path)
        .await
        .err()
        .context("a missing asset is an error")?
        .downcast::<AssetError>()?;
    match &err {
        AssetError::Missing { path, .. } => assert_eq!(path, &format!("public/{png_name}")),
        other => bail!("expected a missing asset, got {other:?}"),
    }

    for file in [&dist.js, &dist.font] {
        let answer = get(&assets, &dist, &file.path).await?;
        assert_eq!(answer.body, file.content, "{} is served", file.path);
    }
    let stats = assets.stats();
    assert_eq!(
        (stats.archive_fetches, stats.fetch_failures),
        (1, 0),
        "{stats:?}"
    );
    assert_eq!(
        stats.cached_bytes,
        (dist.js.content.len() + dist.font.content.len()) as u64,
        "only good assets are held"
    );
    Ok(())
}

async fn whole_artifacts_are_evicted_least_recently_used_first(store: ArtifactStore) -> Result<()> {
    let a = dist("artifact a")?;
    let b = dist("artifact b, a little longer")?;
    let c = dist("c")?;
    for d in [&a, &b, &c] {
        store.put(&d.packed).await?;
    }
    // Room for two artifacts, not three.
    let max = a.asset_bytes() + b.asset_bytes();
    ensure!(c.asset_bytes() <= a.asset_bytes(), "c is the smallest");
    let assets = Assets::new(store.clone(), max);
    let fetches = |assets: &Assets| assets.stats().archive_fetches;

    get(&assets, &a, &a.css.path).await?;
    get(&assets, &b, &b.css.path).await?;
    get(&assets, &a, &a.js.path).await?; // a is now the more recently used
    assert_eq!(fetches(&assets), 2);
    get(&assets, &c, &c.css.path).await?; // evicts b, the least recently used
    let stats = assets.stats();
    assert_eq!(
        (
            stats.archive_fetches,
            stats.evictions,
            stats.cached_artifacts
        ),
        (3, 1, 2),
        "{stats:?}"
    );
    assert_eq!(stats.cached_bytes, a.asset_bytes() + c.asset_bytes());
    get(&assets, &a, &a.png.path).await?;
    get(&assets, &c, &c.png.path).await?;
    assert_eq!(fetches(&assets), 3, "a and c are still held");
    let answer = get(&assets, &b, &b.css.path).await?;
    assert_eq!(answer.body, b.css.content, "b is read again");
    assert_eq!(fetches(&assets), 4);
    assert!(assets.stats().cached_bytes <= max);

    // No room at all: every request is answered, nothing is kept.
    let assets = Assets::new(store, 0);
    for _ in 0..2 {
        let answer = get(&assets, &a, &a.css.path).await?;
        assert_eq!(answer.body, a.css.content);
    }
    let stats = assets.stats();
    assert_eq!(
        (
            stats.archive_fetches,
            stats.cached_artifacts,
            stats.cached_bytes
        ),
        (2, 0, 0),
        "{stats:?}"
    );
    Ok(())
}

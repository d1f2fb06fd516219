//! Immutable assets: the fingerprinted files of the route owner's artifact, answered from the
//! artifact store without the app, awake or asleep ("Immutable Asset Request" in the request
//! lifecycle traces).
//!
//! [`Assets::index`] turns an artifact manifest's asset entries into a map from request path
//! (`/<assets dir>/<fingerprinted name>`) to what a response needs, with no I/O; only names
//! that carry the start of their content's sha256 are in it, since only those may be cached
//! forever. [`Assets::respond`] (and `serve`, with the edge's body) answers GET and HEAD for those paths: `304` when the client's
//! `If-None-Match` already names the content (without reading anything), else the bytes.
//! The first request for an artifact digest reads the archive from the store once (requests
//! meanwhile, from any worker thread, wait for the same read), checks each asset against the
//! sha256 its manifest records, and keeps only the asset bytes in a cache bounded in bytes
//! that evicts whole artifacts, least recently used first.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};
use hyper::{
    HeaderMap, Method, Response, StatusCode,
    body::Bytes,
    header::{
        CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, ETAG, HeaderValue, IF_NONE_MATCH,
        X_CONTENT_TYPE_OPTIONS,
    },
};
use rhone_manifest::{artifact::ArtifactAssets, vango::sha256_hex};
use rhone_store::{ArtifactStore, Digest, InvalidDigest, StoreError, archive};

use crate::body::Body;

/// What a fingerprinted file is answered with: its name changes whenever its content does.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// Why an asset could not be answered. Each names the artifact digest; the caller answers
/// 503 when [`AssetError::is_transient`], else 502.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AssetError {
    #[error("the artifact digest {digest:?} is not valid")]
    InvalidDigest {
        digest: String,
        #[source]
        source: InvalidDigest,
    },
    #[error("reading artifact {digest} from the artifact store failed")]
    Store {
        digest: Digest,
        #[source]
        source: Arc<StoreError>,
    },
    #[error("artifact {digest} cannot be read as an archive")]
    Archive {
        digest: Digest,
        #[source]
        source: Arc<StoreError>,
    },
    #[error("artifact {digest} has no file {path}, which its asset manifest lists")]
    Missing { digest: Digest, path: String },
    #[error(
        "in artifact {digest}, {path} has sha256 {actual} ({actual_size} bytes); \
         its asset manifest says {expected} ({expected_size} bytes)"
    )]
    Corrupt {
        digest: Digest,
        path: String,
        expected: String,
        expected_size: u64,
        actual: String,
        actual_size: u64,
    },
    #[error("reading the assets of artifact {digest} stopped: {reason}")]
    Task { digest: Digest, reason: String },
}

impl AssetError {
    /// The artifact digest the error is about, as the caller gave it.
    pub fn digest(&self) -> &str {
        match self {
            AssetError::InvalidDigest { digest, .. } => digest,
            AssetError::Store { digest, .. }
            | AssetError::Archive { digest, .. }
            | AssetError::Missing { digest, .. }
            | AssetError::Corrupt { digest, .. }
            | AssetError::Task { digest, .. } => digest.as_str(),
        }
    }

    /// Whether asking again may succeed (the store could not be reached or read): 503 with
    /// `Retry-After`. The others (no such artifact, altered bytes, an asset missing from its
    /// artifact) will not change by themselves: 502.
    pub fn is_transient(&self) -> bool {
        match self {
            AssetError::Store { source, .. } => !matches!(
                **source,
                StoreError::NotFound(_)
                    | StoreError::DigestMismatch { .. }
                    | StoreError::InvalidDigest(_)
            ),
            AssetError::Task { .. } => true,
            AssetError::InvalidDigest { .. }
            | AssetError::Archive { .. }
            | AssetError::Missing { .. }
            | AssetError::Corrupt { .. } => false,
        }
    }
}

/// The fingerprinted assets of one artifact, by request path. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct AssetIndex {
    assets: Arc<HashMap<String, Asset>>,
}

#[derive(Debug)]
struct Asset {
    /// Path of the file inside the artifact.
    archive_path: String,
    /// Lowercase hex sha256 of the content.
    sha256: String,
    size: u64,
    content_type: &'static str,
    /// `"sha256-<hex>"`.
    etag: HeaderValue,
}

impl AssetIndex {
    /// Whether `path` (a request's path, percent-encoded or not) is a fingerprinted asset.
    pub fn contains(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    pub fn len(&self) -> usize {
        self.assets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.assets.is_empty()
    }

    /// The request paths served, sorted.
    pub fn paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = self.assets.keys().map(String::as_str).collect();
        paths.sort_unstable();
        paths
    }

    fn get(&self, path: &str) -> Option<&Asset> {
        if self.assets.is_empty() {
            return None;
        }
        self.assets
            .get(path)
            .or_else(|| self.assets.get(percent_decode(path)?.as_ref()))
    }
}

/// What [`Assets`] has done since it was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AssetStats {
    /// Archives read from the artifact store (one per artifact while it stays cached).
    pub archive_fetches: u64,
    /// Reads that failed (store or archive errors; a corrupt asset alone is not one).
    pub fetch_failures: u64,
    /// Artifacts whose assets are in memory.
    pub cached_artifacts: usize,
    /// Bytes of asset content in memory.
    pub cached_bytes: u64,
    /// Artifacts dropped from memory to stay within the bound.
    pub evictions: u64,
}

/// Serves immutable assets from the artifact store through a bounded in-memory cache shared
/// by every worker thread. Cheap to clone.
#[derive(Clone)]
pub struct Assets {
    inner: Arc<Inner>,
}

struct Inner {
    store: ArtifactStore,
    max_cached_bytes: u64,
    state: Mutex<State>,
    fetches: AtomicU64,
    failures: AtomicU64,
}

#[derive(Default)]
struct State {
    artifacts: HashMap<String, Slot>,
    /// Advances on every use; a slot's `last_used` orders eviction.
    clock: u64,
    /// Identifies a slot across an await, so a read only finishes the slot it started.
    next_id: u64,
    cached_bytes: u64,
    evictions: u64,
}

struct Slot {
    id: u64,
    last_used: u64,
    state: SlotState,
}

type Loading = Shared<BoxFuture<'static, Result<Arc<Loaded>, AssetError>>>;

enum SlotState {
    /// The archive is being read; every request for the artifact awaits this one read.
    Loading(Loading),
    Ready(Arc<Loaded>),
}

/// The assets of one artifact, by path inside the artifact.
struct Loaded {
    assets: HashMap<String, Result<Bytes, AssetError>>,
    /// Bytes of content held.
    size: u64,
}

impl std::fmt::Debug for Assets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assets")
            .field("max_cached_bytes", &self.inner.max_cached_bytes)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Assets {
    /// Assets read from `store`, keeping at most about `max_cached_bytes` of asset content in
    /// memory (an artifact whose assets alone exceed it is served but not kept).
    pub fn new(store: ArtifactStore, max_cached_bytes: u64) -> Self {
        Assets {
            inner: Arc::new(Inner {
                store,
                max_cached_bytes,
                state: Mutex::new(State::default()),
                fetches: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
        }
    }

    /// The fingerprinted assets of an artifact manifest, by request path. Pure; build it once
    /// per artifact digest and keep it. Entries left out (and so never served from here):
    /// those not marked immutable, those whose name does not carry the first 8 hex digits of
    /// their sha256, and those with a malformed sha256 or path.
    pub fn index(manifest: &ArtifactAssets) -> AssetIndex {
        let Some(dir) = normal_path(&manifest.dir, true) else {
            return AssetIndex::default();
        };
        let mut assets = HashMap::new();
        for entry in manifest.entries.iter().filter(|e| e.immutable) {
            let Some(name) = normal_path(&entry.fingerprinted, false) else {
                continue;
            };
            let sha256 = &entry.sha256;
            if !is_sha256_hex(sha256) || !names_digest(&name, sha256) {
                continue;
            }
            let Ok(etag) = HeaderValue::from_str(&format!("\"sha256-{sha256}\"")) else {
                continue;
            };
            let archive_path = if dir.is_empty() {
                name.clone()
            } else {
                format!("{dir}/{name}")
            };
            assets.insert(
                format!("/{archive_path}"),
                Asset {
                    content_type: content_type(&name),
                    archive_path,
                    sha256: sha256.clone(),
                    size: entry.size,
                    etag,
                },
            );
        }
        AssetIndex {
            assets: Arc::new(assets),
        }
    }

    /// Answers a GET or HEAD for `path` if it is a fingerprinted asset of `index` (the index
    /// of the artifact `artifact_digest`), as a response of the edge's own body type; see
    /// [`Assets::respond`].
    pub(crate) async fn serve(
        &self,
        artifact_digest: &str,
        index: &AssetIndex,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Response<Body>>, AssetError> {
        let resp = self
            .respond(artifact_digest, index, method, path, headers)
            .await?;
        Ok(resp.map(|r| r.map(Body::full)))
    }

    /// Answers a GET or HEAD for `path` if it is a fingerprinted asset of `index` (the index
    /// of the artifact `artifact_digest`): `304` when `If-None-Match` names its content
    /// (without reading anything), else `200` with the bytes, empty for HEAD. Both carry
    /// `ETag: "sha256-<hex>"` and `Cache-Control: public, max-age=31536000, immutable`.
    /// `Ok(None)` for any other method or path: the caller routes the request as usual.
    pub async fn respond(
        &self,
        artifact_digest: &str,
        index: &AssetIndex,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Option<Response<Bytes>>, AssetError> {
        let head = match *method {
            Method::GET => false,
            Method::HEAD => true,
            _ => return Ok(None),
        };
        let Some(asset) = index.get(path) else {
            return Ok(None);
        };
        if none_match(headers, &asset.sha256) {
            let mut resp = Response::new(Bytes::new());
            *resp.status_mut() = StatusCode::NOT_MODIFIED;
            let h = resp.headers_mut();
            h.insert(ETAG, asset.etag.clone());
            h.insert(CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
            return Ok(Some(resp));
        }
        let loaded = self.loaded(artifact_digest, index).await?;
        let bytes = match loaded.assets.get(&asset.archive_path) {
            Some(Ok(bytes)) => bytes.clone(),
            Some(Err(e)) => return Err(e.clone()),
            // An index other than the one the artifact was loaded with.
            None => {
                return Err(AssetError::Missing {
                    digest: parse_digest(artifact_digest)?,
                    path: asset.archive_path.clone(),
                });
            }
        };
        let length = HeaderValue::from(bytes.len());
        let mut resp = Response::new(if head { Bytes::new() } else { bytes });
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
        h.insert(CONTENT_LENGTH, length);
        h.insert(ETAG, asset.etag.clone());
        h.insert(CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
        h.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
        Ok(Some(resp))
    }

    pub fn stats(&self) -> AssetStats {
        let state = self.lock();
        AssetStats {
            archive_fetches: self.inner.fetches.load(Ordering::Relaxed),
            fetch_failures: self.inner.failures.load(Ordering::Relaxed),
            cached_artifacts: state
                .artifacts
                .values()
                .filter(|s| matches!(s.state, SlotState::Ready(_)))
                .count(),
            cached_bytes: state.cached_bytes,
            evictions: state.evictions,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The assets of `artifact_digest`: from memory, else from the one read in flight for
    /// it, else from a new read of the archive.
    async fn loaded(
        &self,
        artifact_digest: &str,
        index: &AssetIndex,
    ) -> Result<Arc<Loaded>, AssetError> {
        let (id, loading) = {
            let mut state = self.lock();
            state.clock += 1;
            let now = state.clock;
            match state.artifacts.get_mut(artifact_digest) {
                Some(slot) => {
                    slot.last_used = now;
                    match &slot.state {
                        SlotState::Ready(loaded) => return Ok(loaded.clone()),
                        SlotState::Loading(loading) => (slot.id, loading.clone()),
                    }
                }
                None => {
                    let digest = parse_digest(artifact_digest)?;
                    let loading = read(self.inner.clone(), digest, index.clone())
                        .boxed()
                        .shared();
                    state.next_id += 1;
                    let id = state.next_id;
                    state.artifacts.insert(
                        artifact_digest.to_owned(),
                        Slot {
                            id,
                            last_used: now,
                            state: SlotState::Loading(loading.clone()),
                        },
                    );
                    (id, loading)
                }
            }
        };
        let result = loading.await;
        let mut state = self.lock();
        let ours = state
            .artifacts
            .get(artifact_digest)
            .is_some_and(|s| s.id == id && matches!(s.state, SlotState::Loading(_)));
        if ours {
            match &result {
                Ok(loaded) => {
                    if let Some(slot) = state.artifacts.get_mut(artifact_digest) {
                        slot.state = SlotState::Ready(loaded.clone());
                    }
                    state.cached_bytes += loaded.size;
                    evict(&mut state, self.inner.max_cached_bytes);
                }
                // Not remembered: the next request reads again.
                Err(_) => {
                    state.artifacts.remove(artifact_digest);
                }
            }
        }
        result
    }
}

/// Drops whole artifacts, least recently used first, until the cache holds at most `max`
/// bytes. Reads in flight hold nothing yet and are left alone.
fn evict(state: &mut State, max: u64) {
    while state.cached_bytes > max {
        let oldest = state
            .artifacts
            .iter()
            .filter_map(|(digest, slot)| match &slot.state {
                SlotState::Ready(loaded) => Some((slot.last_used, digest, loaded.size)),
                SlotState::Loading(_) => None,
            })
            .min_by_key(|(last_used, _, _)| *last_used)
            .map(|(_, digest, size)| (digest.clone(), size));
        let Some((digest, size)) = oldest else {
            return;
        };
        state.artifacts.remove(&digest);
        state.cached_bytes -= size;
        state.evictions += 1;
        tracing::debug!(artifact = %digest, bytes = size, "asset cache: artifact evicted");
    }
}

/// Reads the archive `digest` from the store and takes out the assets of `index`, each
/// checked against its manifest's sha256 and size.
async fn read(
    inner: Arc<Inner>,
    digest: Digest,
    index: AssetIndex,
) -> Result<Arc<Loaded>, AssetError> {
    inner.fetches.fetch_add(1, Ordering::Relaxed);
    let result = async {
        let bytes = inner
            .store
            .get(&digest)
            .await
            .map_err(|e| AssetError::Store {
                digest: digest.clone(),
                source: Arc::new(e),
            })?;
        let task_digest = digest.clone();
        // Parsing the archive and hashing every asset is CPU work: off the worker thread.
        tokio::task::spawn_blocking(move || extract(&bytes, &index, &task_digest))
            .await
            .map_err(|e| AssetError::Task {
                digest: digest.clone(),
                reason: e.to_string(),
            })?
    }
    .await;
    match &result {
        Ok(loaded) => tracing::debug!(
            artifact = %digest, assets = loaded.assets.len(), bytes = loaded.size,
            "asset cache: artifact read"
        ),
        Err(e) => {
            inner.failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(artifact = %digest, error = %DisplayChain(e), "asset cache: reading the artifact failed");
        }
    }
    result
}

fn extract(bytes: &[u8], index: &AssetIndex, digest: &Digest) -> Result<Arc<Loaded>, AssetError> {
    let files = archive::files(bytes).map_err(|e| AssetError::Archive {
        digest: digest.clone(),
        source: Arc::new(e),
    })?;
    let mut assets = HashMap::with_capacity(index.assets.len());
    let mut size = 0;
    for asset in index.assets.values() {
        let path = asset.archive_path.clone();
        let content = match files.get(&path) {
            None => Err(AssetError::Missing {
                digest: digest.clone(),
                path: path.clone(),
            }),
            Some(data) => {
                let actual = sha256_hex(data);
                if actual == asset.sha256 && data.len() as u64 == asset.size {
                    size += data.len() as u64;
                    Ok(Bytes::copy_from_slice(data))
                } else {
                    Err(AssetError::Corrupt {
                        digest: digest.clone(),
                        path: path.clone(),
                        expected: asset.sha256.clone(),
                        expected_size: asset.size,
                        actual,
                        actual_size: data.len() as u64,
                    })
                }
            }
        };
        if let Err(e) = &content {
            tracing::warn!(error = %e, "asset cache: an asset cannot be served");
        }
        assets.insert(path, content);
    }
    Ok(Arc::new(Loaded { assets, size }))
}

fn parse_digest(digest: &str) -> Result<Digest, AssetError> {
    Digest::parse(digest).map_err(|source| AssetError::InvalidDigest {
        digest: digest.to_owned(),
        source,
    })
}

/// An error with its causes, `: `-separated.
struct DisplayChain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(c) = cause {
            write!(f, ": {c}")?;
            cause = c.source();
        }
        Ok(())
    }
}

/// `path` as `/`-separated normal components (`.` and empty ones dropped), or `None` if it
/// is absolute, has `..` or a backslash, or is empty (allowed only when `may_be_empty`: the
/// assets directory may be the artifact's root).
fn normal_path(path: &str, may_be_empty: bool) -> Option<String> {
    if path.starts_with('/') || path.contains('\\') {
        return None;
    }
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") || (parts.is_empty() && !may_be_empty) {
        return None;
    }
    Some(parts.join("/"))
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether the file name in `path` carries the first 8 hex digits of `sha256` as one of its
/// dot-separated parts between the stem and the extension (`app.0123abcd.css`,
/// `vango.0123abcd.min.js`), as Vango names fingerprinted files.
fn names_digest(path: &str, sha256: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    let parts: Vec<&str> = name.split('.').collect();
    let inner = parts.get(1..parts.len().saturating_sub(1)).unwrap_or(&[]);
    inner.iter().any(|p| sha256.get(..8) == Some(*p))
}

/// `If-None-Match` names the asset whose sha256 is `sha256`: `*`, or a list with its ETag,
/// compared weakly (RFC 9110 13.1.2: `W/` is ignored). A malformed header names nothing.
fn none_match(headers: &HeaderMap, sha256: &str) -> bool {
    headers.get_all(IF_NONE_MATCH).iter().any(|value| {
        let Ok(value) = value.to_str() else {
            return false;
        };
        if value.trim() == "*" {
            return true;
        }
        entity_tags(value).is_some_and(|tags| {
            tags.iter()
                .any(|t| t.strip_prefix("sha256-") == Some(sha256))
        })
    })
}

/// The opaque tags (without quotes or `W/`) of a comma-separated list of entity tags, or
/// `None` if it is malformed. Commas inside a quoted tag belong to the tag.
fn entity_tags(value: &str) -> Option<Vec<&str>> {
    let mut tags = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return Some(tags);
        }
        rest = rest.strip_prefix("W/").unwrap_or(rest);
        let quoted = rest.strip_prefix('"')?;
        let end = quoted.find('"')?;
        tags.push(&quoted[..end]);
        rest = &quoted[end + 1..];
        // Only whitespace may come between a tag and the next comma.
        let next = rest.trim_start_matches([' ', '\t']);
        if !(next.is_empty() || next.starts_with(',')) {
            return None;
        }
        rest = next;
    }
}

/// The `Content-Type` of a file by its last extension.
fn content_type(name: &str) -> &'static str {
    let file = name.rsplit('/').next().unwrap_or(name);
    let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" | "cjs" => "text/javascript; charset=utf-8",
        "json" | "map" => "application/json",
        "webmanifest" => "application/manifest+json",
        "html" | "htm" => "text/html; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ttf" => "font/ttf",
        "otf" => "font/otf",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "mp4" => "video/mp4",
        "webm" => "video/webm",
        "mp3" => "audio/mpeg",
        "ogg" => "audio/ogg",
        "wav" => "audio/wav",
        _ => "application/octet-stream",
    }
}

/// `path` with its `%XX` escapes decoded, if it has any and they decode to UTF-8.
fn percent_decode(path: &str) -> Option<Cow<'_, str>> {
    if !path.contains('%') {
        return None;
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok().map(Cow::Owned)
}

#[cfg(test)]
mod tests {
    use rhone_manifest::vango::AssetEntry;

    use super::*;

    fn entry(fingerprinted: &str, content: &[u8], immutable: bool) -> AssetEntry {
        AssetEntry {
            source: fingerprinted.into(),
            fingerprinted: fingerprinted.into(),
            sha256: sha256_hex(content),
            size: content.len() as u64,
            immutable,
        }
    }

    /// `stem.<first 8 hex of sha256(content)>.ext`
    fn named(stem: &str, content: &[u8], ext: &str) -> String {
        format!("{stem}.{}.{ext}", &sha256_hex(content)[..8])
    }

    fn assets_of(dir: &str, entries: Vec<AssetEntry>) -> ArtifactAssets {
        ArtifactAssets {
            dir: dir.into(),
            manifest: "manifest.json".into(),
            entries,
        }
    }

    #[test]
    fn index_has_fingerprinted_entries_only() {
        let css = named("app", b"body{}", "css");
        let js = format!("js/{}", named("vango", b"x", "min.js"));
        let mut wrong_digest = entry(&named("bad", b"one", "css"), b"one", true);
        wrong_digest.sha256 = sha256_hex(b"two");
        let mut upper = entry(&named("up", b"u", "css"), b"u", true);
        upper.sha256 = upper.sha256.to_uppercase();
        let index = Assets::index(&assets_of(
            "public",
            vec![
                entry(&css, b"body{}", true),
                entry(&js, b"x", true),
                // Vango copies some files unhashed: never immutable.
                entry("islands/x.js", b"island", false),
                // Marked immutable, but the name does not carry the digest.
                entry("plain.css", b"plain", true),
                wrong_digest,
                upper,
                entry(&format!("../{}", named("out", b"o", "css")), b"o", true),
            ],
        ));
        assert_eq!(
            index.paths(),
            [format!("/public/{css}"), format!("/public/{js}")]
        );
        let asset = index.get(&format!("/public/{css}")).expect("indexed");
        assert_eq!(asset.archive_path, format!("public/{css}"));
        assert_eq!(asset.content_type, "text/css; charset=utf-8");
        assert_eq!(asset.size, 6);
        assert_eq!(
            asset.etag.to_str().ok(),
            Some(format!("\"sha256-{}\"", sha256_hex(b"body{}")).as_str())
        );
        assert!(index.contains(&format!("/public/{js}")));
        for absent in [
            "/public/islands/x.js".to_owned(),
            "/public/plain.css".to_owned(),
            format!("/{css}"),
            format!("/public/{css}/"),
            format!("/public//{css}"),
            format!("/public/{css}?v=1"),
            "/public/".to_owned(),
            "/".to_owned(),
        ] {
            assert!(!index.contains(&absent), "{absent}");
        }
    }

    #[test]
    fn index_normalizes_the_assets_dir() {
        let css = named("app", b"a", "css");
        let cases: &[(&str, Option<String>)] = &[
            ("public", Some(format!("/public/{css}"))),
            ("./public/", Some(format!("/public/{css}"))),
            ("static/assets", Some(format!("/static/assets/{css}"))),
            (".", Some(format!("/{css}"))),
            ("", Some(format!("/{css}"))),
            ("/public", None),
            ("../public", None),
        ];
        for (dir, expected) in cases {
            let index = Assets::index(&assets_of(dir, vec![entry(&css, b"a", true)]));
            let paths: Vec<String> = index.paths().into_iter().map(str::to_owned).collect();
            assert_eq!(
                paths,
                expected.iter().cloned().collect::<Vec<_>>(),
                "{dir:?}"
            );
        }
    }

    #[test]
    fn percent_encoded_paths_match() {
        let name = named("my logo", b"png", "png");
        let index = Assets::index(&assets_of("public", vec![entry(&name, b"png", true)]));
        let encoded = format!("/public/{}", name.replace(' ', "%20"));
        assert!(index.contains(&encoded));
        assert!(index.contains(&format!("/public/{name}")));
        assert!(!index.contains("/public/my%2"));
        assert_eq!(percent_decode("/a%2Fb%zz"), None);
        assert_eq!(percent_decode("/a%C3%A9").as_deref(), Some("/a\u{e9}"));
        assert_eq!(percent_decode("/plain"), None);
    }

    #[test]
    fn if_none_match_compares_weakly_and_handles_lists_and_star() {
        let sha = sha256_hex(b"x");
        let other = sha256_hex(b"y");
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["*"], true),
            (&[" * "], true),
            (&[&format!("\"sha256-{sha}\"")], true),
            (&[&format!("W/\"sha256-{sha}\"")], true),
            (&[&format!("\"sha256-{other}\", \"sha256-{sha}\"")], true),
            (&[&format!("\"a,b\",W/\"sha256-{sha}\"")], true),
            (
                &[&format!("\"sha256-{other}\""), &format!("\"sha256-{sha}\"")],
                true,
            ),
            (&[&format!("\"sha256-{other}\"")], false),
            (&[&format!("sha256-{sha}")], false),
            (&[&format!("\"{sha}\"")], false),
            (&[&format!("\"sha256-{}\"", &sha[..8])], false),
            (&[&format!("\"sha256-{sha}\" junk")], false),
            (&[&format!("\"sha256-{sha}")], false),
            (&[&format!("w/\"sha256-{sha}\"")], false),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(
                    IF_NONE_MATCH,
                    HeaderValue::from_str(v).expect("a valid header value"),
                );
            }
            assert_eq!(none_match(&headers, &sha), *expected, "{values:?}");
        }
    }

    #[test]
    fn content_types_by_extension() {
        for (name, expected) in [
            ("app.0123abcd.css", "text/css; charset=utf-8"),
            ("vango.0123abcd.min.js", "text/javascript; charset=utf-8"),
            ("m.0123abcd.mjs", "text/javascript; charset=utf-8"),
            ("app.0123abcd.js.map", "application/json"),
            ("logo.0123abcd.PNG", "image/png"),
            ("icons/logo.0123abcd.svg", "image/svg+xml"),
            ("photo.0123abcd.jpeg", "image/jpeg"),
            ("font.0123abcd.woff2", "font/woff2"),
            ("app.0123abcd.wasm", "application/wasm"),
            ("favicon.0123abcd.ico", "image/x-icon"),
            ("data.0123abcd.bin", "application/octet-stream"),
            ("noext", "application/octet-stream"),
        ] {
            assert_eq!(content_type(name), expected, "{name}");
        }
    }

    #[test]
    fn names_digest_looks_between_stem_and_extension() {
        let sha = sha256_hex(b"z");
        let h = &sha[..8];
        assert!(names_digest(&format!("a.{h}.css"), &sha));
        assert!(names_digest(&format!("d/vango.{h}.min.js"), &sha));
        assert!(!names_digest(&format!("{h}.css"), &sha));
        assert!(!names_digest(&format!("a.css.{h}"), &sha));
        assert!(!names_digest("a.00000000.css", &sha));
    }

    /// `serve` is `respond` with the edge's body: one frame of the bytes, none for HEAD.
    #[tokio::test]
    async fn serve_answers_with_the_edges_body() -> Result<(), Box<dyn std::error::Error>> {
        use hyper::body::Body as _;

        let tmp = tempfile::tempdir()?;
        let dist = tmp.path().join("dist");
        let name = named("app", b"body{}", "css");
        std::fs::create_dir_all(dist.join("public"))?;
        std::fs::write(dist.join("public").join(&name), b"body{}")?;
        let packed = archive::pack_dir(&dist)?;
        let store = ArtifactStore::local(tmp.path().join("store"));
        store.put(&packed).await?;
        let assets = Assets::new(store, 1024);
        let index = Assets::index(&assets_of("public", vec![entry(&name, b"body{}", true)]));
        let path = format!("/public/{name}");
        let none = HeaderMap::new();
        let digest = packed.digest().as_str();

        let resp = assets
            .serve(digest, &index, &Method::GET, &path, &none)
            .await?;
        let mut body = resp.ok_or("an asset")?.into_body();
        assert_eq!(body.size_hint().exact(), Some(6));
        let frame = std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx))
            .await
            .ok_or("a frame")??;
        assert_eq!(frame.into_data().ok().as_deref(), Some(&b"body{}"[..]));
        assert!(body.is_end_stream());

        let resp = assets
            .serve(digest, &index, &Method::HEAD, &path, &none)
            .await?;
        let resp = resp.ok_or("an asset")?;
        assert_eq!(
            resp.headers().get(CONTENT_LENGTH).map(|v| v.as_bytes()),
            Some(&b"6"[..])
        );
        assert!(resp.body().is_end_stream(), "HEAD has no body");
        assert_eq!(assets.stats().archive_fetches, 1);
        Ok(())
    }

    #[test]
    fn transient_errors_are_the_stores_own() {
        let digest = Digest::of(b"artifact");
        let store = |e: StoreError| AssetError::Store {
            digest: digest.clone(),
            source: Arc::new(e),
        };
        let io = store(StoreError::Io {
            context: "reading".into(),
            source: std::io::Error::other("disk"),
        });
        assert!(io.is_transient());
        assert_eq!(io.digest(), digest.as_str());
        assert!(
            io.to_string().contains(digest.as_str()),
            "the message names the artifact: {io}"
        );
        assert!(!store(StoreError::NotFound(digest.clone())).is_transient());
        let missing = AssetError::Missing {
            digest: digest.clone(),
            path: "public/a.css".into(),
        };
        assert!(!missing.is_transient());
        assert_eq!(
            missing.to_string(),
            format!("artifact {digest} has no file public/a.css, which its asset manifest lists")
        );
    }
}

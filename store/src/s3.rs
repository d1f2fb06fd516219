//! The artifact store on any S3 API server (S3, MinIO, s3s-fs): one object per artifact
//! at `<prefix>sha256/<hex>` in one bucket.

use std::fmt;

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

use crate::archive::Packed;
use crate::error::{Result, StoreError};
use crate::{ARTIFACT_MEDIA_TYPE, verified};
use rhone_core::digest::Digest;

/// A secret that never shows in `Debug` output, logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    pub fn new(secret: impl Into<String>) -> Self {
        SecretKey(secret.into())
    }

    /// The secret itself, for the one place that signs requests with it.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where and how to reach the S3 API server. Every field is required.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http://` or `https://` URL of the server, e.g. `http://127.0.0.1:9000`.
    pub endpoint: String,
    /// Signing region; S3-compatible servers usually accept `us-east-1`.
    pub region: String,
    pub bucket: String,
    /// Prepended to every key: `""`, or a folder such as `rhone/` (a missing `/` is added).
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: SecretKey,
}

/// Artifacts in an S3 bucket, addressed by path style (`endpoint/bucket/key`), which every
/// S3-compatible server understands.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3Store {
    /// Builds the client; no request is made. Every unusable field is reported at once.
    pub fn new(config: &S3Config) -> Result<Self> {
        let mut problems = Vec::new();
        if !(config.endpoint.starts_with("http://") || config.endpoint.starts_with("https://")) {
            problems.push(format!(
                "endpoint {:?} must start with http:// or https://",
                config.endpoint
            ));
        }
        for (name, value) in [
            ("region", &config.region),
            ("bucket", &config.bucket),
            ("access key id", &config.access_key_id),
            ("secret access key", &config.secret_access_key.0),
        ] {
            if value.trim().is_empty() {
                problems.push(format!("{name} is empty"));
            }
        }
        if !problems.is_empty() {
            return Err(StoreError::S3Config(problems.join("; ")));
        }

        let credentials = Credentials::new(
            &config.access_key_id,
            config.secret_access_key.expose_secret(),
            None,
            None,
            "rhone-config",
        );
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let sdk_config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(&config.endpoint)
            .region(Region::new(config.region.clone()))
            .credentials_provider(credentials)
            .force_path_style(true)
            .http_client(http_client)
            // We verify every read against its sha256 ourselves, and not every S3 API
            // server speaks the SDK's default CRC checksums.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            .build();
        let mut prefix = config.prefix.clone();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(sdk_config),
            bucket: config.bucket.clone(),
            prefix,
        })
    }

    /// The underlying client, for bucket administration and tests.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The object key of the artifact with this digest.
    pub fn key_of(&self, digest: &Digest) -> String {
        format!("{}sha256/{}", self.prefix, digest.hex())
    }

    pub async fn put(&self, packed: &Packed) -> Result<Digest> {
        let digest = packed.digest();
        if self.exists(digest).await? {
            return Ok(digest.clone());
        }
        let key = self.key_of(digest);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&key)
            .content_type(ARTIFACT_MEDIA_TYPE)
            .content_length(i64::try_from(packed.size()).unwrap_or(i64::MAX))
            .body(ByteStream::from(packed.bytes().to_vec()))
            .send()
            .await
            .map_err(|e| s3_error("PutObject", &key, e))?;
        tracing::debug!(%digest, bucket = %self.bucket, %key, "stored artifact");
        Ok(digest.clone())
    }

    pub async fn get(&self, digest: &Digest) -> Result<Vec<u8>> {
        let key = self.key_of(digest);
        let response = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await;
        let output = match response {
            Ok(output) => output,
            Err(e) if e.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                return Err(StoreError::NotFound(digest.clone()));
            }
            Err(e) => return Err(s3_error("GetObject", &key, e)),
        };
        let body = output
            .body
            .collect()
            .await
            .map_err(|e| s3_error("GetObject", &key, e))?;
        verified(body.to_vec(), digest).await
    }

    pub async fn exists(&self, digest: &Digest) -> Result<bool> {
        let key = self.key_of(digest);
        let response = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await;
        match response {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(e) => Err(s3_error("HeadObject", &key, e)),
        }
    }
}

fn s3_error(
    op: &'static str,
    key: &str,
    source: impl std::error::Error + Send + Sync + 'static,
) -> StoreError {
    StoreError::S3 {
        op,
        key: key.to_owned(),
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> S3Config {
        S3Config {
            endpoint: "http://127.0.0.1:9".into(),
            region: "us-east-1".into(),
            bucket: "b".into(),
            prefix: "rhone".into(),
            access_key_id: "AKID".into(),
            secret_access_key: SecretKey::new("very-secret-value"),
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let text = format!("{:?}", config());
        assert!(text.contains("***"), "{text}");
        assert!(!text.contains("very-secret-value"), "{text}");
    }

    #[test]
    fn every_bad_field_is_reported_at_once() {
        let mut bad = config();
        bad.endpoint = "127.0.0.1:9".into();
        bad.bucket = String::new();
        bad.secret_access_key = SecretKey::new(" ");
        let err = S3Store::new(&bad).expect_err("bad config").to_string();
        for part in ["endpoint", "bucket is empty", "secret access key is empty"] {
            assert!(err.contains(part), "{err}");
        }
        assert!(!err.contains("region"), "{err}");
    }

    #[test]
    fn keys_are_prefixed_content_addresses() -> Result<()> {
        let store = S3Store::new(&config())?;
        let digest = Digest::of(b"x");
        assert_eq!(
            store.key_of(&digest),
            format!("rhone/sha256/{}", digest.hex())
        );
        Ok(())
    }
}

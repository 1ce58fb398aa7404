//! The object store as the shared store sees it: content-addressed blobs and manifests per
//! registry, and fill leases (see [`super::lease`]). Keys:
//!
//! ```text
//! <prefix><registry>/blobs/<alg>/<xx>/<hex>          verified blob bytes
//! <prefix><registry>/manifests/<alg>/<xx>/<hex>      verified manifest bytes (Content-Type kept)
//! <prefix><registry>/leases/<alg>/<hex>/<generation> a fill in progress somewhere
//! ```
//!
//! Keys are built only from configured registry names and parsed digests, never from request
//! text. Every object was verified before it was written, and is verified again when it is
//! read in full (a store is not trusted more than an upstream).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::config::S3Settings;
use dockerproxy_core::reference::Digest;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
    RetryConfig, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::http::{HyperConnector, HyperService};

/// Multipart chunk size for blob uploads.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Bound of one small call (HEAD, manifest GET, lease PUT/LIST) on a request's path.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest pause between two chunks of a store read or two parts of an upload.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a store call with a deadline; a timeout is an error like any other.
pub async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, object_store::Error>>,
) -> Result<T, object_store::Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(r) => r,
        Err(_) => Err(object_store::Error::Generic {
            store: "shared",
            source: format!("no answer within {limit:?}").into(),
        }),
    }
}

/// A byte stream read from the store.
pub type RemoteStream =
    futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>;

/// The object store client and the replica's memory of what the store holds.
pub struct Remote {
    pub(super) store: AmazonS3,
    prefix: String,
    /// Blobs known to be in the store: (registry, digest) → size. Filled by the listing at
    /// start, by lookups that found an object and by this replica's uploads.
    known: Mutex<HashMap<(String, Digest), u64>>,
}

impl core::fmt::Debug for Remote {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Remote")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Remote {
    /// A client for `s`, using `tls` for an https endpoint.
    pub fn new(s: &S3Settings, tls: rustls::ClientConfig) -> Result<Self, object_store::Error> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&s.endpoint)
            .with_bucket_name(&s.bucket)
            .with_region(&s.region)
            .with_access_key_id(&s.access_key_id)
            .with_secret_access_key(&s.secret_access_key)
            .with_allow_http(s.allow_http)
            .with_virtual_hosted_style_request(false)
            .with_http_connector(HyperConnector(HyperService::new(tls)))
            // Few, quick retries: a lookup waits on these calls (object_store's default retries
            // for up to 3 minutes).
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: Duration::from_secs(10),
                ..RetryConfig::default()
            })
            .build()?;
        Ok(Self {
            store,
            prefix: s.prefix.clone(),
            known: Mutex::new(HashMap::new()),
        })
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<(String, Digest), u64>> {
        self.known
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn key(&self, registry: &str, kind: &str, digest: &Digest) -> Path {
        // `storage_path` is `blobs/<alg>/<xx>/<hex>`: keep its tail under our own kind.
        let tail = digest.storage_path();
        let tail = tail.strip_prefix("blobs/").unwrap_or(&tail);
        Path::from(format!("{}{registry}/{kind}/{tail}", self.prefix))
    }

    pub(super) fn lease_dir(&self, registry: &str, digest: &Digest) -> Path {
        Path::from(format!(
            "{}{registry}/leases/{}/{}",
            self.prefix,
            digest.algorithm().as_str(),
            digest.hex()
        ))
    }

    /// Size of the blob in the store, from memory or one HEAD; `None` when absent or the store
    /// cannot answer (logged).
    pub async fn blob_size(&self, registry: &str, digest: &Digest) -> Option<u64> {
        if let Some(size) = self.known().get(&(registry.to_owned(), digest.clone())) {
            return Some(*size);
        }
        let key = self.key(registry, "blobs", digest);
        match bounded(CALL_TIMEOUT, self.store.head(&key)).await {
            Ok(meta) => {
                self.learn(registry, digest, meta.size);
                Some(meta.size)
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => {
                tracing::warn!(error = %e, "shared store HEAD failed");
                None
            }
        }
    }

    /// Remembers a blob the store holds.
    pub fn learn(&self, registry: &str, digest: &Digest, size: u64) {
        self.known()
            .insert((registry.to_owned(), digest.clone()), size);
    }

    /// Forgets a blob (it vanished or was corrupt).
    pub fn forget(&self, registry: &str, digest: &Digest) {
        self.known().remove(&(registry.to_owned(), digest.clone()));
    }

    /// Number of blobs this replica knows the store holds.
    pub fn known_count(&self) -> usize {
        self.known().len()
    }

    /// Streams a whole blob (a range is cut by the caller after verification: the store is not
    /// trusted with partial reads).
    pub async fn blob_stream(
        &self,
        registry: &str,
        digest: &Digest,
    ) -> Result<RemoteStream, object_store::Error> {
        let key = self.key(registry, "blobs", digest);
        let got = bounded(
            CALL_TIMEOUT,
            self.store.get_opts(&key, GetOptions::default()),
        )
        .await?;
        Ok(got.into_stream())
    }

    /// Deletes a blob found corrupt, so the next request fills it again from upstream.
    pub async fn delete_blob(&self, registry: &str, digest: &Digest) {
        self.forget(registry, digest);
        let key = self.key(registry, "blobs", digest);
        if let Err(e) = bounded(CALL_TIMEOUT, self.store.delete(&key)).await {
            tracing::warn!(error = %e, "shared store: could not delete a corrupt blob");
        }
    }

    /// Uploads a committed local file as the blob `digest` (multipart above one part).
    pub async fn upload_blob(
        &self,
        registry: &str,
        digest: &Digest,
        file: std::fs::File,
        size: u64,
    ) -> Result<(), object_store::Error> {
        let path = self.key(registry, "blobs", digest);
        let mut file = tokio::fs::File::from_std(file);
        let io = |e: std::io::Error| object_store::Error::Generic {
            store: "shared",
            source: Box::new(e),
        };
        if size <= PART_SIZE as u64 {
            let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            file.read_to_end(&mut buf).await.map_err(io)?;
            bounded(IDLE_TIMEOUT, self.store.put(&path, PutPayload::from(buf))).await?;
        } else {
            let upload = bounded(CALL_TIMEOUT, self.store.put_multipart(&path)).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; 1024 * 1024];
            let written = async {
                loop {
                    let n = file.read(&mut buf).await.map_err(io)?;
                    if n == 0 {
                        break;
                    }
                    bounded(IDLE_TIMEOUT, writer.wait_for_capacity(4)).await?;
                    writer.write(buf.get(..n).unwrap_or_default());
                }
                Ok::<(), object_store::Error>(())
            }
            .await;
            match written {
                Ok(()) => bounded(IDLE_TIMEOUT, writer.finish()).await.map(drop)?,
                Err(e) => {
                    // Never leave a half-written upload (and its billed parts) behind.
                    let _ = bounded(CALL_TIMEOUT, writer.abort()).await;
                    return Err(e);
                }
            }
        }
        self.learn(registry, digest, size);
        Ok(())
    }

    /// Stores a verified manifest with its media type.
    pub async fn put_manifest(
        &self,
        registry: &str,
        digest: &Digest,
        media_type: &str,
        body: Bytes,
    ) -> Result<(), object_store::Error> {
        let mut attributes = Attributes::new();
        attributes.insert(Attribute::ContentType, media_type.to_owned().into());
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        let key = self.key(registry, "manifests", digest);
        bounded(CALL_TIMEOUT, self.store.put_opts(&key, body.into(), opts))
            .await
            .map(drop)
    }

    /// A stored manifest and its media type; `None` when absent or unreadable (logged).
    pub async fn get_manifest(&self, registry: &str, digest: &Digest) -> Option<(Bytes, String)> {
        let key = self.key(registry, "manifests", digest);
        let got = match bounded(CALL_TIMEOUT, self.store.get(&key)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "shared store manifest GET failed");
                return None;
            }
        };
        // No media type: not one of ours, a miss.
        let media_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .filter(|t| !t.is_empty())?;
        let body = bounded(CALL_TIMEOUT, got.bytes()).await.ok()?;
        Some((body, media_type))
    }

    /// Lists the blobs in the store into memory (the per-replica index is rebuilt from the
    /// store at start). Returns how many were found.
    pub async fn scan(self: &Arc<Self>) -> Result<usize, object_store::Error> {
        let prefix = (!self.prefix.is_empty())
            .then(|| Path::from(self.prefix.trim_end_matches('/').to_owned()));
        let mut list = self.store.list(prefix.as_ref());
        let mut found = 0;
        while let Some(meta) = list.next().await {
            let meta = meta?;
            let key = meta.location.as_ref();
            let key = key.strip_prefix(self.prefix.as_str()).unwrap_or(key);
            if let Some((registry, digest)) = parse_blob_key(key) {
                self.learn(&registry, &digest, meta.size);
                found += 1;
            }
        }
        Ok(found)
    }
}

/// `<registry>/blobs/<alg>/<xx>/<hex>` → (registry, digest), checked to round-trip.
fn parse_blob_key(key: &str) -> Option<(String, Digest)> {
    let (registry, rest) = key.split_once("/blobs/")?;
    if registry.is_empty() || registry.contains('/') {
        return None;
    }
    let mut parts = rest.split('/');
    let (alg, xx, hex) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || hex.get(..2) != Some(xx) {
        return None;
    }
    let digest = Digest::parse(&format!("{alg}:{hex}")).ok()?;
    Some((registry.to_owned(), digest))
}

#[cfg(test)]
mod tests {
    use super::parse_blob_key;

    #[test]
    fn blob_keys_parse_strictly() {
        let hex = "a".repeat(64);
        let ok = format!("docker.io/blobs/sha256/aa/{hex}");
        let (r, d) = parse_blob_key(&ok).unwrap();
        assert_eq!(r, "docker.io");
        assert_eq!(d.to_string(), format!("sha256:{hex}"));
        assert!(parse_blob_key(&format!("docker.io/blobs/sha256/ab/{hex}")).is_none());
        assert!(parse_blob_key(&format!("docker.io/blobs/sha256/aa/{hex}/x")).is_none());
        assert!(parse_blob_key("docker.io/blobs/sha256/aa/short").is_none());
        assert!(parse_blob_key(&format!("a/b/blobs/sha256/aa/{hex}")).is_none());
        assert!(parse_blob_key(&format!("docker.io/manifests/sha256/aa/{hex}")).is_none());
    }
}

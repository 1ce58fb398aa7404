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
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use dockerproxy_core::config::S3Settings;
use dockerproxy_core::reference::Digest;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutOptions,
    PutPayload, WriteMultipart,
};
use tokio::io::AsyncReadExt;

use super::http::{HyperConnector, HyperService};

/// Multipart chunk size for blob uploads.
const PART_SIZE: usize = 8 * 1024 * 1024;

/// A byte stream read from the store.
pub type RemoteStream = futures_util::stream::BoxStream<'static, Result<Bytes, object_store::Error>>;

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
        match self.store.head(&self.key(registry, "blobs", digest)).await {
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

    /// Streams a blob, all of it or the inclusive range `(first, last)`.
    pub async fn blob_stream(
        &self,
        registry: &str,
        digest: &Digest,
        range: Option<(u64, u64)>,
    ) -> Result<RemoteStream, object_store::Error> {
        let options = GetOptions {
            range: range.map(|(a, b)| GetRange::Bounded(a..b.saturating_add(1))),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.key(registry, "blobs", digest), options)
            .await?;
        Ok(got.into_stream())
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
            self.store.put(&path, PutPayload::from(buf)).await?;
        } else {
            let upload = self.store.put_multipart(&path).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut buf = vec![0u8; 1024 * 1024];
            loop {
                let n = file.read(&mut buf).await.map_err(io)?;
                if n == 0 {
                    break;
                }
                writer.wait_for_capacity(4).await?;
                writer.write(buf.get(..n).unwrap_or_default());
            }
            writer.finish().await?;
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
        self.store
            .put_opts(&self.key(registry, "manifests", digest), body.into(), opts)
            .await
            .map(drop)
    }

    /// A stored manifest and its media type; `None` when absent or unreadable (logged).
    pub async fn get_manifest(&self, registry: &str, digest: &Digest) -> Option<(Bytes, String)> {
        let got = match self.store.get(&self.key(registry, "manifests", digest)).await {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "shared store manifest GET failed");
                return None;
            }
        };
        let media_type = got
            .attributes
            .get(&Attribute::ContentType)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let body = got.bytes().await.ok()?;
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

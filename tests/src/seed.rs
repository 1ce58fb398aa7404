//! Pushes the deterministic image set of [`crate::content`] into a registry over the registry HTTP
//! API (TESTBED §2.1): `POST …/blobs/uploads/` then `PUT <Location>&digest=…` with
//! `Content-Type: application/octet-stream`; manifests `PUT` with `Content-Type` = their media type.
//! With a token registry the pusher first gets a `pull,push` token per repository from the realm.

use std::collections::HashMap;
use std::time::Duration;

use base64::Engine as _;
use reqwest::{StatusCode, Url};

use crate::content::{Blob, Image, Index, Seeded, build_cached};
use crate::error::{FixtureResult, unexpected};
use crate::token_server::SERVICE;

/// How the pusher authenticates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushAuth {
    /// No authentication.
    None,
    /// `Authorization: Basic` on every request.
    Basic {
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
    /// Bearer token from `realm` (GET with Basic credentials and `scope=repository:R:pull,push`).
    Token {
        /// The token endpoint.
        realm: String,
        /// User name.
        user: String,
        /// Password.
        password: String,
    },
}

impl PushAuth {
    /// Basic as alice.
    pub fn basic_alice() -> Self {
        Self::Basic {
            user: "alice".into(),
            password: "secret".into(),
        }
    }

    /// Token as alice from `realm`.
    pub fn token_alice(realm: &str) -> Self {
        Self::Token {
            realm: realm.to_owned(),
            user: "alice".into(),
            password: "secret".into(),
        }
    }
}

/// Options of [`seed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedOptions {
    /// Payload size of `library/big:latest` (default 100 MiB).
    pub big_layer_size: usize,
}

impl Default for SeedOptions {
    fn default() -> Self {
        Self {
            big_layer_size: crate::content::DEFAULT_BIG_LAYER_SIZE,
        }
    }
}

/// Pushes blobs and manifests to one registry.
#[derive(Debug)]
pub struct Pusher {
    client: reqwest::Client,
    base: Url,
    auth: PushAuth,
    tokens: HashMap<String, String>,
}

impl Pusher {
    /// A pusher for `base_url` (`http(s)://127.0.0.1:PORT`); TLS certificates are not verified.
    pub fn new(base_url: &str, auth: PushAuth) -> FixtureResult<Self> {
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()?;
        let base = Url::parse(base_url).map_err(|e| unexpected(format!("{base_url}: {e}")))?;
        Ok(Self {
            client,
            base,
            auth,
            tokens: HashMap::new(),
        })
    }

    async fn authorization(&mut self, repo: &str) -> FixtureResult<Option<String>> {
        match &self.auth {
            PushAuth::None => Ok(None),
            PushAuth::Basic { user, password } => Ok(Some(basic(user, password))),
            PushAuth::Token {
                realm,
                user,
                password,
            } => {
                if let Some(token) = self.tokens.get(repo) {
                    return Ok(Some(format!("Bearer {token}")));
                }
                let scope = format!("repository:{repo}:pull,push");
                let resp = self
                    .client
                    .get(realm)
                    .query(&[("service", SERVICE), ("scope", scope.as_str())])
                    .header("Authorization", basic(user, password))
                    .send()
                    .await?;
                let status = resp.status();
                let body: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await?).unwrap_or_default();
                let token = body["token"]
                    .as_str()
                    .filter(|_| status == StatusCode::OK)
                    .ok_or_else(|| unexpected(format!("token for {repo}: {status} {body}")))?
                    .to_owned();
                self.tokens.insert(repo.to_owned(), token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    fn url(&self, path: &str) -> FixtureResult<Url> {
        self.base
            .join(path)
            .map_err(|e| unexpected(format!("{path}: {e}")))
    }

    async fn request(
        &mut self,
        method: reqwest::Method,
        url: Url,
        repo: &str,
    ) -> FixtureResult<reqwest::RequestBuilder> {
        let mut builder = self.client.request(method, url);
        if let Some(auth) = self.authorization(repo).await? {
            builder = builder.header("Authorization", auth);
        }
        Ok(builder)
    }

    /// Whether `repo` already has the blob.
    pub async fn has_blob(&mut self, repo: &str, digest: &str) -> FixtureResult<bool> {
        let url = self.url(&format!("/v2/{repo}/blobs/{digest}"))?;
        let resp = self
            .request(reqwest::Method::HEAD, url, repo)
            .await?
            .send()
            .await?;
        Ok(resp.status() == StatusCode::OK)
    }

    /// Uploads a blob into `repo` (two-step monolithic upload), unless it is already there.
    pub async fn push_blob(&mut self, repo: &str, blob: &Blob) -> FixtureResult<()> {
        if self.has_blob(repo, &blob.digest).await? {
            return Ok(());
        }
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/"))?;
        let resp = self
            .request(reqwest::Method::POST, url, repo)
            .await?
            .send()
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(unexpected(format!(
                "POST uploads {repo}: {}",
                resp.status()
            )));
        }
        let location = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| unexpected("upload POST without Location"))?;
        let mut put_url = self.url(location)?;
        put_url
            .query_pairs_mut()
            .append_pair("digest", &blob.digest);
        let resp = self
            .request(reqwest::Method::PUT, put_url, repo)
            .await?
            .header("Content-Type", "application/octet-stream")
            .body(blob.data.clone())
            .send()
            .await?;
        if resp.status() != StatusCode::CREATED {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(unexpected(format!(
                "PUT blob {repo} {}: {status} {text}",
                blob.digest
            )));
        }
        Ok(())
    }

    /// Puts a manifest under `reference` (a tag or its digest) and checks the returned digest.
    pub async fn push_manifest(
        &mut self,
        repo: &str,
        reference: &str,
        manifest: &Blob,
    ) -> FixtureResult<()> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"))?;
        let resp = self
            .request(reqwest::Method::PUT, url, repo)
            .await?
            .header("Content-Type", manifest.media_type.as_str())
            .body(manifest.data.clone())
            .send()
            .await?;
        let status = resp.status();
        let digest = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status != StatusCode::CREATED {
            let text = resp.text().await.unwrap_or_default();
            return Err(unexpected(format!(
                "PUT manifest {repo}:{reference}: {status} {text}"
            )));
        }
        if digest.as_deref() != Some(manifest.digest.as_str()) {
            return Err(unexpected(format!(
                "PUT manifest {repo}:{reference}: digest {digest:?}, expected {}",
                manifest.digest
            )));
        }
        Ok(())
    }

    /// Pushes config, layers and manifest of an image (by tag, or by digest if the tag is empty).
    pub async fn push_image(&mut self, image: &Image) -> FixtureResult<()> {
        for blob in image.blobs() {
            self.push_blob(&image.repo, blob).await?;
        }
        let reference = if image.tag.is_empty() {
            image.manifest.digest.as_str()
        } else {
            image.tag.as_str()
        };
        self.push_manifest(&image.repo, reference, &image.manifest)
            .await
    }

    /// Pushes every child of an index by digest, then the index by tag.
    pub async fn push_index(&mut self, index: &Index) -> FixtureResult<()> {
        for child in &index.children {
            self.push_image(child).await?;
        }
        self.push_manifest(&index.repo, &index.tag, &index.manifest)
            .await
    }

    /// Pushes a whole image set.
    pub async fn push_all(&mut self, seeded: &Seeded) -> FixtureResult<()> {
        for image in seeded.images() {
            self.push_image(image).await?;
        }
        for index in seeded.indexes() {
            self.push_index(index).await?;
        }
        Ok(())
    }
}

/// Builds (memoised) and pushes the whole image set into the registry at `base_url`.
pub async fn seed(base_url: &str, auth: PushAuth, options: &SeedOptions) -> FixtureResult<Seeded> {
    let size = options.big_layer_size;
    let seeded = tokio::task::spawn_blocking(move || build_cached(size))
        .await
        .map_err(|e| unexpected(format!("content build panicked: {e}")))??;
    Pusher::new(base_url, auth)?.push_all(&seeded).await?;
    Ok(seeded)
}

fn basic(user: &str, password: &str) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {encoded}")
}

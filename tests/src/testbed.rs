//! [`TestBed`]: one call that sets up a seeded upstream for a test — PKI, optional token server,
//! a `docker-registry` in the chosen mode on a fresh storage directory, and the seeded image set.
//! Further registry processes in other modes can share the same storage
//! ([`TestBed::start_registry`]). Everything lives in one temporary directory, removed on drop
//! after the processes are stopped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use tempfile::TempDir;

use crate::content::Seeded;
use crate::error::{FixtureResult, unexpected};
use crate::pki::Pki;
use crate::registry::{Registry, RegistryAuth, RegistryConfig, write_htpasswd};
use crate::seed::{PushAuth, SeedOptions, seed};
use crate::token_server::TokenServer;

/// How the upstream registry is exposed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Plain HTTP, no auth.
    Plain,
    /// HTTPS with the test CA, no auth.
    Tls,
    /// Plain HTTP, htpasswd Basic auth (alice:secret, bob:hunter2).
    Basic,
    /// Plain HTTP, bearer tokens from the token server.
    Token,
    /// HTTPS with the test CA and bearer tokens.
    TlsToken,
}

impl Mode {
    /// Whether the mode serves TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::TlsToken)
    }

    /// Whether the mode needs the token server.
    pub fn is_token(self) -> bool {
        matches!(self, Self::Token | Self::TlsToken)
    }
}

/// A seeded upstream registry and its helpers. Fields drop in order: processes first, the
/// temporary directory last.
#[derive(Debug)]
pub struct TestBed {
    /// The registry started by [`TestBed::start`].
    pub registry: Registry,
    /// The token server (token modes only, `None` otherwise).
    pub token_server: Option<TokenServer>,
    /// Everything seeded, with digests and bytes.
    pub seeded: Seeded,
    /// The test PKI (CA, server cert, token signer).
    pub pki: Pki,
    /// The shared storage root directory.
    pub storage: PathBuf,
    /// The mode of `registry`.
    pub mode: Mode,
    /// The htpasswd file (alice, bob), always written.
    pub htpasswd: PathBuf,
    /// The temporary directory holding everything (free for the test's own files too).
    pub tmp: TempDir,
    registries_started: AtomicUsize,
}

impl TestBed {
    /// Starts and seeds a test bed with the default options (100 MiB big layer).
    ///
    /// # Panics
    /// When any fixture fails (the message says which); call
    /// [`crate::tools::require_tool`]`("docker-registry")` first to skip where it is missing.
    pub async fn start(mode: Mode) -> Self {
        Self::start_with(mode, SeedOptions::default()).await
    }

    /// Like [`TestBed::start`] with explicit seed options.
    ///
    /// # Panics
    /// When any fixture fails.
    pub async fn start_with(mode: Mode, options: SeedOptions) -> Self {
        match Self::try_start_with(mode, options).await {
            Ok(bed) => bed,
            Err(e) => panic!("TestBed::start({mode:?}) failed: {e}"),
        }
    }

    /// Like [`TestBed::start_with`], returning errors instead of panicking.
    pub async fn try_start_with(mode: Mode, options: SeedOptions) -> FixtureResult<Self> {
        let tmp = tempfile::Builder::new()
            .prefix("dockerproxy-testbed-")
            .tempdir()?;
        let pki = Pki::generate(&tmp.path().join("pki"))?;
        let htpasswd = tmp.path().join("htpasswd");
        write_htpasswd(&htpasswd)?;
        let token_server = if mode.is_token() {
            Some(TokenServer::start(&pki)?)
        } else {
            None
        };
        let storage = tmp.path().join("storage");
        let config = registry_config(
            &pki,
            &storage,
            &htpasswd,
            token_server.as_ref(),
            &tmp.path().join("registry-0"),
            mode,
        )?;
        let registry = Registry::start(config).await?;
        let auth = match (mode, &token_server) {
            (Mode::Basic, _) => PushAuth::basic_alice(),
            (_, Some(ts)) => PushAuth::token_alice(&ts.realm()),
            _ => PushAuth::None,
        };
        let seeded = seed(registry.base_url(), auth, &options).await?;
        Ok(Self {
            registry,
            token_server,
            seeded,
            pki,
            storage,
            mode,
            htpasswd,
            tmp,
            registries_started: AtomicUsize::new(1),
        })
    }

    /// Starts another registry process in `mode` on the same storage (already seeded). A token
    /// mode needs the bed's token server (start the bed in a token mode).
    pub async fn start_registry(&self, mode: Mode) -> FixtureResult<Registry> {
        let n = self.registries_started.fetch_add(1, Ordering::Relaxed);
        let work = self.tmp.path().join(format!("registry-{n}"));
        let config = registry_config(
            &self.pki,
            &self.storage,
            &self.htpasswd,
            self.token_server.as_ref(),
            &work,
            mode,
        )?;
        Registry::start(config).await
    }

    /// The token server. Panics when the bed is not in a token mode.
    ///
    /// # Panics
    /// When the bed was started without a token server.
    pub fn token_server(&self) -> &TokenServer {
        match &self.token_server {
            Some(ts) => ts,
            None => panic!("TestBed in mode {:?} has no token server", self.mode),
        }
    }

    /// `127.0.0.1:PORT` of the registry, as written in image references.
    pub fn host_port(&self) -> String {
        self.registry.host_port()
    }

    /// The directory holding only `ca.crt` (skopeo `--src-cert-dir`).
    pub fn cert_dir(&self) -> &std::path::Path {
        &self.pki.cert_dir
    }
}

fn registry_config(
    pki: &Pki,
    storage: &std::path::Path,
    htpasswd: &std::path::Path,
    token_server: Option<&TokenServer>,
    work_dir: &std::path::Path,
    mode: Mode,
) -> FixtureResult<RegistryConfig> {
    let auth = match mode {
        Mode::Plain | Mode::Tls => RegistryAuth::None,
        Mode::Basic => RegistryAuth::Basic {
            htpasswd: htpasswd.to_path_buf(),
        },
        Mode::Token | Mode::TlsToken => {
            let ts =
                token_server.ok_or_else(|| unexpected(format!("{mode:?} needs a token server")))?;
            RegistryAuth::Token {
                realm: ts.realm(),
                bundle: pki.bundle.clone(),
            }
        }
    };
    Ok(RegistryConfig {
        storage: storage.to_path_buf(),
        work_dir: work_dir.to_path_buf(),
        tls: mode
            .is_tls()
            .then(|| (pki.server_cert.clone(), pki.server_key.clone())),
        auth,
    })
}

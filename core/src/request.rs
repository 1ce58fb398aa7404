//! OCI request classification (DESIGN.md §3 `RegistryRequest`): the path grammar of the
//! distribution-spec, validated before any routing side effect or upstream contact.

use http::Method;

use crate::oci_error::OciError;
use crate::reference::{Digest, Name, Reference};

/// What a `/v2/...` path (after any registry prefix was removed) asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistryRequest {
    /// `/v2/` or `/v2`.
    Base,
    /// `/v2/auth`.
    Auth,
    /// `/v2/<name>/manifests/<reference>`.
    Manifest {
        /// Repository.
        name: Name,
        /// Tag or digest.
        reference: Reference,
    },
    /// `/v2/<name>/blobs/<digest>`.
    Blob {
        /// Repository.
        name: Name,
        /// Digest.
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/...` (push only).
    Upload {
        /// Repository.
        name: Name,
    },
    /// `/v2/<name>/tags/list`.
    Tags {
        /// Repository.
        name: Name,
    },
    /// `/v2/<name>/referrers/<digest>`.
    Referrers {
        /// Repository.
        name: Name,
        /// Subject digest.
        digest: Digest,
    },
    /// `/v2/_catalog`.
    Catalog,
}

impl RegistryRequest {
    /// The repository, if the request names one.
    pub fn name(&self) -> Option<&Name> {
        match self {
            Self::Manifest { name, .. }
            | Self::Blob { name, .. }
            | Self::Upload { name }
            | Self::Tags { name }
            | Self::Referrers { name, .. } => Some(name),
            Self::Base | Self::Auth | Self::Catalog => None,
        }
    }
}

/// The result of classifying a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Classified {
    /// `/` (the 301 to `/v2/`).
    Root,
    /// A registry API path.
    Registry(RegistryRequest),
    /// Any other path: 404 `UNSUPPORTED` on a route host.
    Other,
}

/// Classifies a raw path (percent-encoded, as received, prefix removed). Encoded `/`, dot
/// segments, NUL, control characters and non-ASCII → `Err` (400); bad names, tags and digests →
/// `Err` with the spec code.
pub fn classify(path: &str) -> Result<Classified, OciError> {
    let _ = path;
    todo!()
}

/// True for methods that only read (GET, HEAD).
pub fn is_read(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

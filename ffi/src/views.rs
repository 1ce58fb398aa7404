//! The C structs that action accessors fill, and the owned copies of core values they point
//! into (cache keys, identities, token keys).

use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::token::{Identity, TokenKey};

use crate::headers::dp_str;

/// Which kind of cache key.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_cache_key_kind {
    /// No key (the field is absent).
    DP_KEY_NONE = 0,
    /// A blob by digest: `registry`, `digest`.
    DP_KEY_BLOB = 1,
    /// A manifest by digest: `registry`, `digest`.
    DP_KEY_MANIFEST = 2,
    /// A tag mapping: `registry`, `name`, `tag`, `accept`.
    DP_KEY_TAG = 3,
}

/// A cache key. Strings point into the action it was read from.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_cache_key {
    /// Kind; the fields that do not apply are `{NULL, 0}`.
    pub kind: dp_cache_key_kind,
    /// Registry name.
    pub registry: dp_str,
    /// `algorithm:hex` (blob and manifest keys).
    pub digest: dp_str,
    /// Repository (tag keys).
    pub name: dp_str,
    /// Tag (tag keys).
    pub tag: dp_str,
    /// Accept class (tag keys).
    pub accept: dp_str,
}

/// An owned copy of a [`CacheKey`] with its digest formatted.
#[derive(Clone, Debug)]
pub(crate) struct OwnedKey {
    kind: dp_cache_key_kind,
    registry: String,
    digest: String,
    name: String,
    tag: String,
    accept: String,
}

impl OwnedKey {
    /// Copies a core key.
    pub(crate) fn new(k: &CacheKey) -> Self {
        let mut o = Self {
            kind: dp_cache_key_kind::DP_KEY_NONE,
            registry: String::new(),
            digest: String::new(),
            name: String::new(),
            tag: String::new(),
            accept: String::new(),
        };
        match k {
            CacheKey::Blob { registry, digest } => {
                o.kind = dp_cache_key_kind::DP_KEY_BLOB;
                o.registry.clone_from(registry);
                o.digest = digest.to_string();
            }
            CacheKey::Manifest { registry, digest } => {
                o.kind = dp_cache_key_kind::DP_KEY_MANIFEST;
                o.registry.clone_from(registry);
                o.digest = digest.to_string();
            }
            CacheKey::Tag {
                registry,
                name,
                tag,
                accept,
            } => {
                o.kind = dp_cache_key_kind::DP_KEY_TAG;
                o.registry.clone_from(registry);
                o.name = name.as_str().to_owned();
                o.tag = tag.as_str().to_owned();
                o.accept.clone_from(accept);
            }
        }
        o
    }

    /// The C view, borrowing `self`.
    pub(crate) fn view(&self) -> dp_cache_key {
        let s = |v: &String| {
            if v.is_empty() {
                dp_str::NONE
            } else {
                dp_str::from_str(v)
            }
        };
        dp_cache_key {
            kind: self.kind,
            registry: s(&self.registry),
            digest: s(&self.digest),
            name: s(&self.name),
            tag: s(&self.tag),
            accept: s(&self.accept),
        }
    }
}

/// The absent key.
pub(crate) const NO_KEY: dp_cache_key = dp_cache_key {
    kind: dp_cache_key_kind::DP_KEY_NONE,
    registry: dp_str::NONE,
    digest: dp_str::NONE,
    name: dp_str::NONE,
    tag: dp_str::NONE,
    accept: dp_str::NONE,
};

/// Whose credential an upstream request or token uses.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum dp_identity_kind {
    /// No credential.
    DP_IDENTITY_ANONYMOUS = 0,
    /// The route's configured credentials.
    DP_IDENTITY_CONFIGURED = 1,
    /// A client credential, known by a keyed hash (`hash`).
    DP_IDENTITY_CLIENT = 2,
}

/// An identity (plain values, no pointers).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_identity {
    /// Kind.
    pub kind: dp_identity_kind,
    /// The keyed hash for `DP_IDENTITY_CLIENT`, else 0.
    pub hash: u64,
}

impl dp_identity {
    /// Converts a core identity.
    pub(crate) fn new(i: &Identity) -> Self {
        match i {
            Identity::Anonymous => Self {
                kind: dp_identity_kind::DP_IDENTITY_ANONYMOUS,
                hash: 0,
            },
            Identity::Configured => Self {
                kind: dp_identity_kind::DP_IDENTITY_CONFIGURED,
                hash: 0,
            },
            Identity::Client(h) => Self {
                kind: dp_identity_kind::DP_IDENTITY_CLIENT,
                hash: *h,
            },
        }
    }
}

/// A token cache key. Strings point into the action it was read from; the scopes are read
/// one by one with `dp_action_token_scope`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
#[allow(non_camel_case_types)]
pub struct dp_token_key {
    /// Registry name.
    pub registry: dp_str,
    /// Realm URL.
    pub realm: dp_str,
    /// `service`, `{NULL, 0}` when absent.
    pub service: dp_str,
    /// Number of scopes.
    pub scope_count: usize,
    /// Identity.
    pub identity: dp_identity,
}

/// The C view of a token key, borrowing `k`.
pub(crate) fn token_key_view(k: &TokenKey) -> dp_token_key {
    dp_token_key {
        registry: dp_str::from_str(&k.registry),
        realm: dp_str::from_str(&k.realm),
        service: dp_str::from_opt(k.service.as_deref()),
        scope_count: k.scopes.len(),
        identity: dp_identity::new(&k.identity),
    }
}

//! Opening stored bodies ([`BodyPlan::Cache`](dockerproxy_core::exchange::BodyPlan::Cache)):
//! a committed file (size-checked, with a reader count that keeps eviction away) or a fill in
//! flight, optionally an inclusive byte range.

use std::fs::File;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::reference::Digest;
use http_body_util::{BodyExt, Full};

use super::reader::{self, ReadSource};
use super::{Inner, Slot, now_ms};
use crate::store::StoreBody;

/// Keeps eviction away from a file while a body reads it. It holds the store weakly: a body
/// still being read never keeps a stopped store (and its directory lock) alive.
pub struct ReadGuard {
    inner: Weak<Inner>,
    digest: Digest,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut st = inner.lock();
        if let Some(e) = st.index.entries.get_mut(&self.digest) {
            e.readers = e.readers.saturating_sub(1);
        }
    }
}

impl Inner {
    pub(super) fn open_file(
        self: &Arc<Self>,
        digest: &Digest,
        size: u64,
    ) -> Option<(Arc<File>, ReadGuard)> {
        let file = File::open(self.layout.content(digest)).ok()?;
        let meta = file.metadata().ok()?;
        if !meta.is_file() || meta.len() != size {
            self.drop_corrupt(digest, "missing or wrong size at open");
            return None;
        }
        let mut st = self.lock();
        let e = st.index.entries.get_mut(digest)?;
        e.readers += 1;
        e.last_read = e.last_read.max(now_ms());
        Some((
            Arc::new(file),
            ReadGuard {
                inner: Arc::downgrade(self),
                digest: digest.clone(),
            },
        ))
    }

    pub(super) async fn open(
        self: &Arc<Self>,
        key: &CacheKey,
        range: Option<(u64, u64)>,
    ) -> Option<StoreBody> {
        let bounds = |size: u64| -> Option<(u64, u64)> {
            match range {
                None => Some((0, size)),
                Some((a, b)) if a <= b && b < size => Some((a, b + 1)),
                Some(_) => None,
            }
        };
        match key {
            CacheKey::Blob { registry, digest } => {
                let (committed, fill) = {
                    let st = self.lock();
                    let fill = match st.inflight.get(&(registry.clone(), digest.clone())) {
                        Some(Slot::Filling(f)) => Some(f.clone()),
                        _ => None,
                    };
                    (st.index.blob(registry, digest), fill)
                };
                if let Some(size) = committed {
                    let (start, end) = bounds(size)?;
                    if let Some((file, guard)) = self.open_file(digest, size) {
                        let source = ReadSource::File {
                            file,
                            guard: Some(guard),
                        };
                        return Some(reader::body(source, start, end));
                    }
                }
                let fill = fill?;
                let (start, end) = bounds(fill.size?)?;
                let attachment = fill.attach()?;
                Some(reader::body(
                    ReadSource::Fill {
                        fill,
                        attachment,
                        report: false,
                    },
                    start,
                    end,
                ))
            }
            CacheKey::Manifest { registry, digest } => {
                let (size, _) = self.lock().index.manifest(registry, digest)?;
                let hot = self.lock().index.hot(digest);
                let body = match hot {
                    Some(b) => b,
                    None => Bytes::from(tokio::fs::read(self.layout.content(digest)).await.ok()?),
                };
                if body.len() as u64 != size {
                    return None;
                }
                let (start, end) = bounds(size)?;
                let part = body.slice(usize::try_from(start).ok()?..usize::try_from(end).ok()?);
                Some(Full::new(part).map_err(|never| match never {}).boxed())
            }
            CacheKey::Tag { .. } => None,
        }
    }
}

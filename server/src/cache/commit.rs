//! Starting, committing and abandoning fills (DESIGN.md §4, SECURITY.md §2.15): a fill takes
//! the leader's claim (the waiters wake and join it), its temp file is committed with fsync,
//! rename and directory fsync before it is indexed and journalled, and a failed or detached fill
//! frees its key and deletes its temp file.

use std::fs::OpenOptions;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::verifier::Verifier;

use super::fill::{self, Fill};
use super::journal::Record;
use super::reader::{self, ReadSource};
use super::{ClaimGuard, Inner, Slot, now_ms};
use crate::body::{ResponseBody, UpstreamStream};
use crate::store::{FillClaim, FillRequest, StoreBody};

impl Inner {
    /// Registers and spawns a fill; the leader's body reads it (the whole blob, or the
    /// target's range). When no fill can start, a ranged request is still answered from the
    /// verified upstream stream (its response is already a `206`); a whole one is given back.
    pub(super) fn start_fill(
        self: &Arc<Self>,
        req: FillRequest,
    ) -> Result<StoreBody, Box<FillRequest>> {
        let range = req.target.range;
        match (self.begin_fill(req), range) {
            (Ok(body), _) => Ok(body),
            (Err(back), Some((first, last))) => {
                let FillRequest {
                    digest,
                    content_length,
                    body,
                    client,
                    ..
                } = *back;
                let verifier = Verifier::new(digest, content_length);
                let stream = UpstreamStream::new(body, client.idle_timeout(), Some(verifier));
                Ok(reader::slice(
                    ResponseBody::upstream(stream),
                    first,
                    last.saturating_add(1),
                ))
            }
            (Err(back), None) => Err(back),
        }
    }

    fn begin_fill(self: &Arc<Self>, req: FillRequest) -> Result<StoreBody, Box<FillRequest>> {
        let FillRequest {
            target,
            digest,
            content_length,
            body,
            request,
            claim,
            client,
        } = req;
        let give_back = |body, request, client| {
            Box::new(FillRequest {
                target: target.clone(),
                digest: digest.clone(),
                content_length,
                body,
                request,
                claim: None,
                client,
            })
        };
        let CacheKey::Blob { registry, .. } = &target.key else {
            return Err(give_back(body, request, client));
        };
        let guard = claim.and_then(FillClaim::downcast::<ClaimGuard>);
        let claim_id = guard.as_ref().map(|g| g.id);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let tmp = self.layout.tmp(id);
        let file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) => {
                self.disk_error("create temp file", &e);
                return Err(give_back(body, request, client));
            }
        };
        let key = (registry.clone(), digest.clone());
        let fill = Arc::new(Fill::new(
            id,
            registry.clone(),
            digest.clone(),
            target.repository.clone(),
            content_length,
            file,
            tmp.clone(),
        ));
        {
            let mut st = self.lock();
            let free = match st.inflight.get(&key) {
                None => true,
                Some(Slot::Claimed { id, .. }) => Some(*id) == claim_id,
                Some(Slot::Filling(_)) => false,
            };
            if !free {
                drop(st);
                let _ = std::fs::remove_file(&tmp);
                return Err(give_back(body, request, client));
            }
            // Replacing the claim drops its sender: the waiters wake and join this fill.
            st.inflight.insert(key, Slot::Filling(fill.clone()));
            st.index
                .link(registry, &target.repository, std::slice::from_ref(&digest));
        }
        drop(guard);
        let Some(attachment) = fill.attach() else {
            return Err(give_back(body, request, client));
        };
        let source = fill::Source {
            body,
            request,
            client,
        };
        tokio::spawn(fill::run(self.clone(), fill.clone(), source));
        // A range past the fill's end makes the reader's body end early: an aborted response.
        let (start, end) = match target.range {
            None => (0, content_length.unwrap_or(u64::MAX)),
            Some((first, last)) => (first, last.saturating_add(1).max(first)),
        };
        Ok(reader::body(
            ReadSource::Fill {
                fill,
                attachment,
                report: true,
            },
            start,
            end,
        ))
    }

    /// Commits a verified fill (fsync, rename, directory fsync), then indexes and journals it.
    pub(crate) async fn commit_fill(self: &Arc<Self>, fill: &Arc<Fill>, len: u64) {
        if fill.size.is_some_and(|s| s != len) || fill.progress().on_disk != len {
            // Detached (disk error): nothing is committed.
            self.abandon_fill(fill, false).await;
            return;
        }
        let this = self.clone();
        let f = fill.clone();
        let r = tokio::task::spawn_blocking(move || this.layout.commit(&f.file, &f.tmp, &f.digest))
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())));
        let now = now_ms();
        {
            let mut st = self.lock();
            let key = (fill.registry.clone(), fill.digest.clone());
            if matches!(st.inflight.get(&key), Some(Slot::Filling(f)) if f.id == fill.id) {
                st.inflight.remove(&key);
            }
            match &r {
                Ok(()) => {
                    st.index.insert_blob(&fill.registry, &fill.digest, len, now);
                    st.index.link(
                        &fill.registry,
                        &fill.repository,
                        std::slice::from_ref(&fill.digest),
                    );
                    let records = [
                        Record::Blob {
                            r: fill.registry.clone(),
                            d: fill.digest.to_string(),
                            s: len,
                        },
                        Record::Link {
                            r: fill.registry.clone(),
                            n: fill.repository.as_str().to_owned(),
                            d: vec![fill.digest.to_string()],
                        },
                    ];
                    self.journal(&mut st, &records);
                }
                Err(e) => self.disk_error("commit", e),
            }
        }
        match r {
            Ok(()) => {
                tracing::debug!(digest = %fill.digest, len, "blob committed");
                let this = self.clone();
                let _ = tokio::task::spawn_blocking(move || this.enforce_cap()).await;
            }
            Err(_) => {
                let _ = tokio::fs::remove_file(&fill.tmp).await;
            }
        }
    }

    /// Frees the key of a failed or detached fill and deletes its temp file.
    pub(crate) async fn abandon_fill(&self, fill: &Arc<Fill>, _integrity: bool) {
        self.detach_fill(fill);
        let _ = tokio::fs::remove_file(&fill.tmp).await;
    }

    /// Takes a fill out of the in-flight table (new lookups no longer join it).
    pub(crate) fn detach_fill(&self, fill: &Fill) {
        let mut st = self.lock();
        let key = (fill.registry.clone(), fill.digest.clone());
        if matches!(st.inflight.get(&key), Some(Slot::Filling(f)) if f.id == fill.id) {
            st.inflight.remove(&key);
        }
    }
}

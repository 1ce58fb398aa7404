//! Storing verified manifests ([`Action::CacheStore`](dockerproxy_core::Action::CacheStore)):
//! the index learns the entry, its media type, the tag mapping and the repository links (the
//! manifest's own digest and every digest it lists) at once, and the bytes stay hot in memory;
//! the file is written content-addressed in the background with the same commit sequence as
//! blobs, and its journal line follows the commit.

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::ManifestEntry;

use super::index::{self, TagEntry};
use super::journal::Record;
use super::{Inner, now_ms};

impl Inner {
    pub(super) fn store_manifest(self: &Arc<Self>, entry: ManifestEntry) {
        let ManifestEntry {
            repository,
            key,
            tag,
            digest,
            media_type,
            body,
        } = entry;
        let CacheKey::Manifest { registry, .. } = key else {
            return;
        };
        let now = now_ms();
        let children = index::manifest_children(&body);
        let size = body.len() as u64;
        let on_disk = {
            let mut st = self.lock();
            st.index
                .insert_manifest(&registry, &digest, size, &media_type, children.clone(), now);
            st.index.set_hot(digest.clone(), body.clone());
            let mut linked = vec![digest.clone()];
            linked.extend(children.iter().cloned());
            let new_links = st.index.link(&registry, &repository, &linked);
            let mut records = Vec::new();
            if !new_links.is_empty() {
                records.push(Record::Link {
                    r: registry.clone(),
                    n: repository.as_str().to_owned(),
                    d: new_links.iter().map(ToString::to_string).collect(),
                });
            }
            if let Some(tag_key) = tag
                && let CacheKey::Tag {
                    name, tag, accept, ..
                } = &tag_key
            {
                records.push(Record::Tag {
                    r: registry.clone(),
                    n: name.as_str().to_owned(),
                    g: tag.as_str().to_owned(),
                    a: accept.clone(),
                    d: digest.to_string(),
                    v: now,
                });
                st.index.tags.insert(
                    tag_key,
                    TagEntry {
                        digest: digest.clone(),
                        validated_at: now,
                    },
                );
            }
            self.journal(&mut st, &records);
            st.index.entries.get(&digest).is_some_and(|e| e.on_disk)
        };
        let this = self.clone();
        let write = move || -> std::io::Result<()> {
            if !on_disk {
                let path = this.layout.content(&digest);
                let present =
                    std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == size);
                if !present {
                    use std::io::Write;
                    let id = this.next_id.fetch_add(1, Ordering::Relaxed);
                    let tmp = this.layout.tmp(id);
                    let mut f = File::create(&tmp)?;
                    let r = f
                        .write_all(&body)
                        .and_then(|()| this.layout.commit(&f, &tmp, &digest));
                    if r.is_err() {
                        let _ = std::fs::remove_file(&tmp);
                    }
                    r?;
                }
            }
            let mut st = this.lock();
            let Some(e) = st.index.entries.get_mut(&digest) else {
                return Ok(());
            };
            e.on_disk = true;
            let record = Record::Manifest {
                r: registry,
                d: digest.to_string(),
                s: size,
                mt: media_type,
                c: children.iter().map(ToString::to_string).collect(),
            };
            this.journal(&mut st, &[record]);
            Ok(())
        };
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = write() {
                this.disk_error("manifest write", &e);
            }
        });
    }
}

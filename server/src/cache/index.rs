//! The memory index over the content files (DESIGN.md §4): which registries hold which digest as
//! a blob or a manifest, sizes, media types, last reads (LRU), open readers, tag mappings,
//! repository links, public repositories and recent grants (COMPAT.md §8.6).
//!
//! It is plain data: no I/O, no clock (times are passed in as milliseconds since the epoch), so
//! the journal replay, the lookups and the eviction plan are all testable directly.

/// std's maps with foldhash's randomly seeded hasher (a new seed per process): SipHash was 6 % of
/// the instructions of a cached manifest hit (callgrind, benches/RESULTS.md). foldhash is
/// hashbrown's own default, and its per-process seed keeps request-chosen keys (repository
/// names, tags) from being crafted into collisions without seeing hash output.
pub type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// See [`HashMap`].
pub type HashSet<K> = std::collections::HashSet<K, foldhash::fast::RandomState>;

use bytes::Bytes;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::Access;
use dockerproxy_core::reference::{Digest, Name, Tag};
use dockerproxy_core::token::Identity;

use super::journal::Record;

/// How long a grant (a 2xx/3xx for a repository and identity) proves access.
pub const GRANT_TTL_MS: u64 = 60_000;
/// Most grants remembered (memory bound).
pub const MAX_GRANTS: usize = 65_536;
/// Most bytes of manifests kept in memory.
pub const HOT_BYTES: usize = 64 << 20;

/// One content file.
#[derive(Clone, Debug, Default)]
pub struct Entry {
    /// Size in bytes.
    pub size: u64,
    /// Last read, ms since the epoch.
    pub last_read: u64,
    /// Bodies currently reading the file.
    pub readers: u32,
    /// The file is committed (false while a manifest write is pending).
    pub on_disk: bool,
    /// Registries holding it as a blob.
    pub blob_of: Vec<String>,
    /// Registries holding it as a manifest.
    pub manifest_of: Vec<String>,
    /// Manifest media type.
    pub media_type: Option<String>,
    /// Digests the manifest lists.
    pub children: Vec<Digest>,
}

impl Entry {
    /// Nobody holds the file (an orphan left by a crash between commit and journal line).
    pub fn is_orphan(&self) -> bool {
        self.blob_of.is_empty() && self.manifest_of.is_empty()
    }
}

/// A tag mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagEntry {
    /// Manifest digest.
    pub digest: Digest,
    /// Last validation, ms since the epoch.
    pub validated_at: u64,
}

/// The memory index.
#[derive(Debug, Default)]
pub struct Index {
    /// Content files by digest.
    pub entries: HashMap<Digest, Entry>,
    /// Tag mappings (keys are [`CacheKey::Tag`]).
    pub tags: HashMap<CacheKey, TagEntry>,
    /// Digests readable through `(registry, repository)`.
    pub links: HashMap<(String, Name), HashSet<Digest>>,
    /// Last anonymous success per `(registry, repository)`.
    pub public: HashMap<(String, Name), u64>,
    /// Last success per `(registry, repository, identity)`.
    pub grants: HashMap<(String, Name, Identity), u64>,
    /// How many held manifests list a digest.
    pub refs: HashMap<Digest, u32>,
    /// Hot manifest bytes.
    hot: HashMap<Digest, Bytes>,
    hot_bytes: usize,
}

fn push_unique(v: &mut Vec<String>, s: &str) -> bool {
    if v.iter().any(|x| x == s) {
        false
    } else {
        v.push(s.to_owned());
        true
    }
}

impl Index {
    /// A scanned content file.
    pub fn add_file(&mut self, digest: Digest, size: u64, modified: u64) {
        self.entries.insert(
            digest,
            Entry {
                size,
                last_read: modified,
                on_disk: true,
                ..Entry::default()
            },
        );
    }

    /// Applies one replayed journal record. Entry records whose file is missing are ignored;
    /// those whose file has another size are returned (the caller deletes the file).
    pub fn replay(&mut self, record: Record) -> Option<Digest> {
        match record {
            Record::Blob { r, d, s } => {
                let d = Digest::parse(&d).ok()?;
                let e = self.entries.get_mut(&d)?;
                if e.size != s {
                    self.entries.remove(&d);
                    return Some(d);
                }
                push_unique(&mut e.blob_of, &r);
            }
            Record::Manifest { r, d, s, mt, c } => {
                let d = Digest::parse(&d).ok()?;
                let e = self.entries.get_mut(&d)?;
                if e.size != s {
                    self.entries.remove(&d);
                    return Some(d);
                }
                push_unique(&mut e.manifest_of, &r);
                e.media_type = Some(mt);
                if e.children.is_empty() {
                    e.children = c.iter().filter_map(|x| Digest::parse(x).ok()).collect();
                }
            }
            Record::Link { r, n, d } => {
                let n = Name::parse(&n)?;
                let set = self.links.entry((r, n)).or_default();
                set.extend(d.iter().filter_map(|x| Digest::parse(x).ok()));
            }
            Record::Tag { r, n, g, a, d, v } => {
                let key = tag_key(r, &n, &g, a)?;
                let digest = Digest::parse(&d).ok()?;
                self.tags.insert(
                    key,
                    TagEntry {
                        digest,
                        validated_at: v,
                    },
                );
            }
            Record::TagDrop { r, n, g, a } => {
                let key = tag_key(r, &n, &g, a)?;
                self.tags.remove(&key);
            }
            Record::Public { r, n, at } => {
                let n = Name::parse(&n)?;
                let v = self.public.entry((r, n)).or_default();
                *v = (*v).max(at);
            }
            Record::Evict { d } => {
                let d = Digest::parse(&d).ok()?;
                if let Some(e) = self.entries.get_mut(&d) {
                    e.blob_of.clear();
                    e.manifest_of.clear();
                }
            }
        }
        None
    }

    /// Recomputes the manifest reference counts (after a replay).
    pub fn recount_refs(&mut self) {
        self.refs.clear();
        for e in self.entries.values() {
            if !e.manifest_of.is_empty() {
                for c in &e.children {
                    *self.refs.entry(c.clone()).or_default() += 1;
                }
            }
        }
    }

    /// The live state as journal records (for compaction).
    pub fn records(&self) -> Vec<Record> {
        let mut out = Vec::with_capacity(self.entries.len() + self.tags.len() + self.links.len());
        for (d, e) in &self.entries {
            if !e.on_disk {
                continue;
            }
            for r in &e.blob_of {
                out.push(Record::Blob {
                    r: r.clone(),
                    d: d.to_string(),
                    s: e.size,
                });
            }
            for r in &e.manifest_of {
                out.push(Record::Manifest {
                    r: r.clone(),
                    d: d.to_string(),
                    s: e.size,
                    mt: e.media_type.clone().unwrap_or_default(),
                    c: e.children.iter().map(ToString::to_string).collect(),
                });
            }
        }
        for ((r, n), set) in &self.links {
            out.push(Record::Link {
                r: r.clone(),
                n: n.as_str().to_owned(),
                d: set.iter().map(ToString::to_string).collect(),
            });
        }
        for (k, t) in &self.tags {
            if let CacheKey::Tag {
                registry,
                name,
                tag,
                accept,
            } = k
            {
                out.push(Record::Tag {
                    r: registry.clone(),
                    n: name.as_str().to_owned(),
                    g: tag.as_str().to_owned(),
                    a: accept.clone(),
                    d: t.digest.to_string(),
                    v: t.validated_at,
                });
            }
        }
        for ((r, n), at) in &self.public {
            out.push(Record::Public {
                r: r.clone(),
                n: n.as_str().to_owned(),
                at: *at,
            });
        }
        out
    }

    /// Records that live state needs (to decide when compaction pays).
    pub fn live_records(&self) -> u64 {
        let entries: usize = self
            .entries
            .values()
            .map(|e| e.blob_of.len() + e.manifest_of.len())
            .sum();
        (entries + self.links.len() + self.tags.len() + self.public.len()) as u64
    }

    /// Size of a committed blob of `registry`.
    pub fn blob(&self, registry: &str, digest: &Digest) -> Option<u64> {
        let e = self.entries.get(digest)?;
        (e.on_disk && e.blob_of.iter().any(|r| r == registry)).then_some(e.size)
    }

    /// A manifest of `registry`: size and media type.
    pub fn manifest(&self, registry: &str, digest: &Digest) -> Option<(u64, String)> {
        let e = self.entries.get(digest)?;
        if !e.manifest_of.iter().any(|r| r == registry) {
            return None;
        }
        Some((e.size, e.media_type.clone().unwrap_or_default()))
    }

    /// Hot bytes of a manifest.
    pub fn hot(&self, digest: &Digest) -> Option<Bytes> {
        self.hot.get(digest).cloned()
    }

    /// Keeps manifest bytes in memory (bounded: the oldest half is dropped when full).
    pub fn set_hot(&mut self, digest: Digest, body: Bytes) {
        if body.len() > HOT_BYTES / 4 {
            return;
        }
        if self.hot_bytes + body.len() > HOT_BYTES {
            let drop: Vec<Digest> = self
                .hot
                .keys()
                .take(self.hot.len() / 2 + 1)
                .cloned()
                .collect();
            for d in drop {
                self.unset_hot(&d);
            }
        }
        self.hot_bytes += body.len();
        if let Some(old) = self.hot.insert(digest, body) {
            self.hot_bytes -= old.len();
        }
    }

    /// Forgets hot bytes.
    pub fn unset_hot(&mut self, digest: &Digest) {
        if let Some(b) = self.hot.remove(digest) {
            self.hot_bytes -= b.len();
        }
    }

    /// Marks a read now.
    pub fn touch(&mut self, digest: &Digest, now: u64) {
        if let Some(e) = self.entries.get_mut(digest) {
            e.last_read = e.last_read.max(now);
        }
    }

    /// Adds a committed blob for `registry`; true when it is new for that registry.
    pub fn insert_blob(&mut self, registry: &str, digest: &Digest, size: u64, now: u64) -> bool {
        let e = self.entries.entry(digest.clone()).or_default();
        e.size = size;
        e.on_disk = true;
        e.last_read = now;
        push_unique(&mut e.blob_of, registry)
    }

    /// Adds a manifest for `registry` (`on_disk` false while its write is pending).
    pub fn insert_manifest(
        &mut self,
        registry: &str,
        digest: &Digest,
        size: u64,
        media_type: &str,
        children: Vec<Digest>,
        now: u64,
    ) {
        let e = self.entries.entry(digest.clone()).or_default();
        e.size = size;
        e.last_read = now;
        e.media_type = Some(media_type.to_owned());
        let new = push_unique(&mut e.manifest_of, registry);
        if new {
            if e.children.is_empty() {
                e.children = children;
            }
            for c in e.children.clone() {
                *self.refs.entry(c).or_default() += 1;
            }
        }
    }

    /// Removes a content entry entirely (eviction, corruption); returns it.
    pub fn remove(&mut self, digest: &Digest) -> Option<Entry> {
        let e = self.entries.remove(digest)?;
        if !e.manifest_of.is_empty() {
            for c in &e.children {
                if let Some(n) = self.refs.get_mut(c) {
                    *n = n.saturating_sub(e.manifest_of.len() as u32);
                    if *n == 0 {
                        self.refs.remove(c);
                    }
                }
            }
        }
        self.unset_hot(digest);
        Some(e)
    }

    /// Links digests to a repository; returns those that were new.
    pub fn link(&mut self, registry: &str, repo: &Name, digests: &[Digest]) -> Vec<Digest> {
        let set = self
            .links
            .entry((registry.to_owned(), repo.clone()))
            .or_default();
        digests
            .iter()
            .filter(|d| set.insert((*d).clone()))
            .cloned()
            .collect()
    }

    /// Records a success for an identity (and a public mark when anonymous); returns true when
    /// the public mark should be journalled (new, or older than `persist_every` ms).
    pub fn record_access(
        &mut self,
        registry: &str,
        repo: &Name,
        identity: &Identity,
        anonymous: bool,
        now: u64,
        persist_every: u64,
    ) -> bool {
        if self.grants.len() >= MAX_GRANTS {
            self.grants
                .retain(|_, at| now.saturating_sub(*at) < GRANT_TTL_MS);
            if self.grants.len() >= MAX_GRANTS {
                self.grants.clear();
            }
        }
        self.grants
            .insert((registry.to_owned(), repo.clone(), identity.clone()), now);
        if !anonymous {
            return false;
        }
        match self.public.entry((registry.to_owned(), repo.clone())) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(now);
                true
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let at = o.get_mut();
                let persist = now.saturating_sub(*at) >= persist_every;
                *at = (*at).max(now);
                persist
            }
        }
    }

    /// The access facts of COMPAT.md §8.6. `digest` is `None` for tags (always linked).
    pub fn access(
        &self,
        registry: &str,
        repo: &Name,
        identity: &Identity,
        digest: Option<&Digest>,
        now: u64,
        (public_ttl_ms, max_stale_ms): (u64, u64),
    ) -> Access {
        let key = (registry.to_owned(), repo.clone());
        let last_public = self.public.get(&key).map(|at| now.saturating_sub(*at));
        let public = last_public.is_some_and(|age| age < public_ttl_ms);
        // Serving a stale tag on an upstream failure needs the repository to have been public
        // within max_stale (COMPAT.md §8.5): by the time a tag is stale, its public mark is
        // older than the manifest TTL.
        let public_within_max_stale =
            last_public.is_some_and(|age| age <= max_stale_ms.max(public_ttl_ms));
        let granted = self
            .grants
            .get(&(registry.to_owned(), repo.clone(), identity.clone()))
            .is_some_and(|at| now.saturating_sub(*at) < GRANT_TTL_MS);
        let linked = match digest {
            None => true,
            Some(d) => self.links.get(&key).is_some_and(|s| s.contains(d)),
        };
        Access {
            public,
            granted,
            linked,
            public_within_max_stale,
        }
    }

    /// Drops expired grants.
    pub fn purge_grants(&mut self, now: u64) {
        self.grants
            .retain(|_, at| now.saturating_sub(*at) < GRANT_TTL_MS);
    }
}

/// A [`CacheKey::Tag`] from journal fields.
fn tag_key(registry: String, name: &str, tag: &str, accept: String) -> Option<CacheKey> {
    Some(CacheKey::Tag {
        registry,
        name: Name::parse(name)?,
        tag: Tag::parse(tag)?,
        accept,
    })
}

/// The digests a manifest lists: `config`, `layers[]`, `manifests[]`, `blobs[]`, `subject` and
/// schema 1 `fsLayers[].blobSum`. Anything unparseable lists nothing.
pub fn manifest_children(body: &[u8]) -> Vec<Digest> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut push = |x: Option<&serde_json::Value>| {
        if let Some(d) = x
            .and_then(|d| d.as_str())
            .and_then(|d| Digest::parse(d).ok())
            && !out.contains(&d)
        {
            out.push(d);
        }
    };
    push(v.pointer("/config/digest"));
    push(v.pointer("/subject/digest"));
    for list in ["layers", "manifests", "blobs"] {
        if let Some(items) = v.get(list).and_then(|l| l.as_array()) {
            for item in items {
                push(item.get("digest"));
            }
        }
    }
    if let Some(items) = v.get("fsLayers").and_then(|l| l.as_array()) {
        for item in items {
            push(item.get("blobSum"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::parse(&format!("sha256:{}", c.to_string().repeat(64))).unwrap()
    }

    fn name(s: &str) -> Name {
        Name::parse(s).unwrap()
    }

    #[test]
    fn children_of_image_manifest_and_index() {
        let body = format!(
            r#"{{"schemaVersion":2,"config":{{"digest":"{}"}},"layers":[{{"digest":"{}"}},{{"digest":"{}"}}]}}"#,
            d('a'),
            d('b'),
            d('a')
        );
        assert_eq!(manifest_children(body.as_bytes()), vec![d('a'), d('b')]);
        let index = format!(r#"{{"manifests":[{{"digest":"{}"}}]}}"#, d('c'));
        assert_eq!(manifest_children(index.as_bytes()), vec![d('c')]);
        assert!(manifest_children(b"not json").is_empty());
    }

    #[test]
    fn registries_never_share_entries() {
        let mut i = Index::default();
        i.insert_blob("a.test", &d('a'), 10, 1);
        assert_eq!(i.blob("a.test", &d('a')), Some(10));
        assert_eq!(i.blob("b.test", &d('a')), None);
    }

    #[test]
    fn access_public_granted_linked() {
        let mut i = Index::default();
        let repo = name("team/app");
        let client = Identity::Client(7);
        assert_eq!(
            i.access("r", &repo, &client, Some(&d('a')), 1000, (600_000, 600_000)),
            Access::default()
        );
        i.link("r", &repo, &[d('a')]);
        assert!(i.record_access("r", &repo, &Identity::Anonymous, true, 1000, 60_000));
        assert!(!i.record_access("r", &repo, &Identity::Anonymous, true, 2000, 60_000));
        let a = i.access("r", &repo, &client, Some(&d('a')), 2000, (600_000, 600_000));
        assert!(a.public && a.linked && !a.granted);
        assert!(
            !i.access("r", &repo, &client, Some(&d('b')), 2000, (600_000, 600_000))
                .linked
        );
        // Public expires with the manifest TTL; grants after 60 s.
        assert!(
            !i.access("r", &repo, &client, None, 700_000, (600_000, 600_000))
                .public
        );
        i.record_access("r", &repo, &client, false, 5000, 60_000);
        assert!(
            i.access("r", &repo, &client, None, 64_999, (600_000, 600_000))
                .granted
        );
        assert!(
            !i.access("r", &repo, &client, None, 65_000, (600_000, 600_000))
                .granted
        );
        assert!(
            !i.access(
                "r",
                &repo,
                &Identity::Client(8),
                None,
                6000,
                (600_000, 600_000)
            )
            .granted
        );
    }

    #[test]
    fn replay_ignores_missing_files_and_reports_wrong_sizes() {
        let mut i = Index::default();
        i.add_file(d('a'), 10, 0);
        i.add_file(d('b'), 5, 0);
        let blob = |x: char, s| Record::Blob {
            r: "r".into(),
            d: d(x).to_string(),
            s,
        };
        assert_eq!(i.replay(blob('a', 10)), None);
        assert_eq!(i.replay(blob('b', 6)), Some(d('b')));
        assert_eq!(i.replay(blob('c', 1)), None);
        assert_eq!(i.blob("r", &d('a')), Some(10));
        assert!(!i.entries.contains_key(&d('b')));
        assert!(!i.entries.contains_key(&d('c')));
        i.replay(Record::Evict {
            d: d('a').to_string(),
        });
        assert_eq!(i.blob("r", &d('a')), None);
        assert!(i.entries[&d('a')].is_orphan());
    }

    #[test]
    fn records_round_trip() {
        let mut i = Index::default();
        i.insert_blob("r", &d('a'), 3, 1);
        i.insert_manifest("r", &d('9'), 2, "application/json", vec![d('a')], 1);
        i.entries.get_mut(&d('9')).unwrap().on_disk = true;
        i.link("r", &name("x/y"), &[d('a'), d('9')]);
        i.record_access("r", &name("x/y"), &Identity::Anonymous, true, 9, 0);
        let mut j = Index::default();
        j.add_file(d('a'), 3, 0);
        j.add_file(d('9'), 2, 0);
        for r in i.records() {
            j.replay(r);
        }
        j.recount_refs();
        assert_eq!(j.blob("r", &d('a')), Some(3));
        assert_eq!(j.manifest("r", &d('9')).unwrap().1, "application/json");
        assert_eq!(j.refs.get(&d('a')), Some(&1));
        assert_eq!(j.public.len(), 1);
        assert_eq!(j.links[&("r".to_owned(), name("x/y"))].len(), 2);
    }
}

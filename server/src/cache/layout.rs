//! Where the cache keeps things under `CACHE_DIR` (DESIGN.md §4, SECURITY.md §2.15):
//!
//! ```text
//! CACHE_DIR/
//!   lock                         exclusive lock held by the owning process
//!   journal                      append-only records (tags, links, public marks, entries)
//!   tmp/fill-<pid>-<n>           files being written; wiped at start
//!   blobs/<alg>/<hex[0..2]>/<hex> committed, verified content, named by its digest
//! ```
//!
//! Content paths are built only from a parsed [`Digest`] (never from request text), and the
//! scan at start accepts only names that parse back to the same path.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use dockerproxy_core::reference::Digest;

/// The directory layout of one cache root.
#[derive(Clone, Debug)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The cache root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `blobs/`.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    /// `tmp/`.
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The journal file.
    pub fn journal(&self) -> PathBuf {
        self.root.join("journal")
    }

    /// The lock file.
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// The committed file of `digest`: `blobs/<alg>/<hex[0..2]>/<hex>`.
    pub fn content(&self, digest: &Digest) -> PathBuf {
        self.root.join(digest.storage_path())
    }

    /// A fresh temp file name.
    pub fn tmp(&self, id: u64) -> PathBuf {
        self.tmp_dir()
            .join(format!("fill-{}-{id}", std::process::id()))
    }

    /// Parses `blobs/<alg>/<shard>/<name>` back into a digest; `None` for anything that is not
    /// exactly the path [`Layout::content`] would build.
    pub fn parse_content(alg: &str, shard: &str, name: &str) -> Option<Digest> {
        let digest = Digest::parse(&format!("{alg}:{name}")).ok()?;
        (digest.storage_path() == format!("blobs/{alg}/{shard}/{name}")).then_some(digest)
    }

    /// Creates the root, `blobs/` and an empty `tmp/` (leftovers of a previous run deleted).
    pub fn prepare(&self) -> io::Result<usize> {
        fs::create_dir_all(&self.root)?;
        fs::create_dir_all(self.blobs_dir())?;
        let tmp = self.tmp_dir();
        let mut removed = 0;
        match fs::read_dir(&tmp) {
            Ok(entries) => {
                for e in entries.flatten() {
                    let p = e.path();
                    let r = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        fs::remove_dir_all(&p)
                    } else {
                        fs::remove_file(&p)
                    };
                    if r.is_ok() {
                        removed += 1;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(&tmp)?,
            Err(e) => return Err(e),
        }
        Ok(removed)
    }

    /// Every committed content file: `(digest, size, modified ms since the epoch)`. Names that
    /// are not valid entries, directories where files should be and symlinks are skipped.
    pub fn scan(&self) -> Vec<(Digest, u64, u64)> {
        let mut out = Vec::new();
        let Ok(algs) = fs::read_dir(self.blobs_dir()) else {
            return out;
        };
        for alg in algs.flatten() {
            let Some(alg_name) = alg.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            let Ok(shards) = fs::read_dir(alg.path()) else {
                continue;
            };
            for shard in shards.flatten() {
                let Some(shard_name) = shard.file_name().to_str().map(str::to_owned) else {
                    continue;
                };
                let Ok(files) = fs::read_dir(shard.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let Some(name) = f.file_name().to_str().map(str::to_owned) else {
                        continue;
                    };
                    let Some(digest) = Self::parse_content(&alg_name, &shard_name, &name) else {
                        continue;
                    };
                    // `DirEntry::metadata` does not follow symlinks: only regular files count.
                    let Ok(meta) = f.metadata() else { continue };
                    if !meta.is_file() {
                        continue;
                    }
                    out.push((digest, meta.len(), modified_ms(&meta)));
                }
            }
        }
        out
    }

    /// Commits a written temp file: fsync it, rename it into its content path, fsync the
    /// directory (and its parent when the shard directory was created).
    pub fn commit(&self, file: &File, tmp: &Path, digest: &Digest) -> io::Result<()> {
        file.sync_all()?;
        let dest = self.content(digest);
        let dir = dest
            .parent()
            .ok_or_else(|| io::Error::other("content path without parent"))?;
        let created = !dir.is_dir();
        if created {
            fs::create_dir_all(dir)?;
        }
        fs::rename(tmp, &dest)?;
        sync_dir(dir)?;
        if created && let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

/// fsyncs a directory (makes a rename in it durable).
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A file's modification time in milliseconds since the Unix epoch (0 when unknown).
pub fn modified_ms(meta: &fs::Metadata) -> u64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn content_path_comes_from_the_digest() {
        let l = Layout::new("/c");
        let d = Digest::parse(&format!("sha256:{HEX}")).unwrap();
        assert_eq!(
            l.content(&d),
            PathBuf::from(format!("/c/blobs/sha256/e3/{HEX}"))
        );
    }

    #[test]
    fn only_exact_names_parse() {
        assert!(Layout::parse_content("sha256", "e3", HEX).is_some());
        assert!(Layout::parse_content("sha256", "e4", HEX).is_none());
        assert!(Layout::parse_content("sha256", "e3", &HEX.to_uppercase()).is_none());
        assert!(Layout::parse_content("sha256", "e3", &format!("{HEX}.tmp")).is_none());
        assert!(Layout::parse_content("md5", "e3", HEX).is_none());
        assert!(Layout::parse_content("sha256", "..", "..").is_none());
    }
}

//! The append-only journal of what the file names alone cannot say: which registry holds which
//! blob or manifest (and its size and media type), tag mappings, repository links and public
//! marks (DESIGN.md §4, SECURITY.md §2.15).
//!
//! One JSON object per line. Replay applies the lines in order; a line that does not parse (a
//! torn last write after a crash, or foreign text) is skipped, and the index ignores any line
//! whose content file is missing or has another size. When the journal grows well past the
//! live state it is compacted: the state is written to a temp file, fsynced and renamed over.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One journal line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t")]
pub enum Record {
    /// A verified blob committed for a registry.
    #[serde(rename = "b")]
    Blob {
        /// Registry.
        r: String,
        /// Digest.
        d: String,
        /// Size.
        s: u64,
    },
    /// A verified manifest committed for a registry, with its media type and the digests it
    /// lists.
    #[serde(rename = "m")]
    Manifest {
        /// Registry.
        r: String,
        /// Digest.
        d: String,
        /// Size.
        s: u64,
        /// Media type.
        mt: String,
        /// Referenced digests (config, layers, child manifests).
        c: Vec<String>,
    },
    /// Digests readable through a repository.
    #[serde(rename = "l")]
    Link {
        /// Registry.
        r: String,
        /// Repository.
        n: String,
        /// Digests.
        d: Vec<String>,
    },
    /// A tag mapping (set or revalidated).
    #[serde(rename = "t")]
    Tag {
        /// Registry.
        r: String,
        /// Repository.
        n: String,
        /// Tag.
        g: String,
        /// Accept class.
        a: String,
        /// Manifest digest.
        d: String,
        /// Last validation, ms since the epoch.
        v: u64,
    },
    /// A tag mapping removed.
    #[serde(rename = "tx")]
    TagDrop {
        /// Registry.
        r: String,
        /// Repository.
        n: String,
        /// Tag.
        g: String,
        /// Accept class.
        a: String,
    },
    /// A repository answered an anonymous request at `at`.
    #[serde(rename = "p")]
    Public {
        /// Registry.
        r: String,
        /// Repository.
        n: String,
        /// Ms since the epoch.
        at: u64,
    },
    /// A content file deleted (evicted): every entry of that digest is gone.
    #[serde(rename = "x")]
    Evict {
        /// Digest.
        d: String,
    },
}

/// The open journal.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    lines: u64,
}

impl Journal {
    /// Reads every parseable record of the journal at `path` (none when it does not exist).
    pub fn replay(path: &Path) -> io::Result<(Vec<Record>, u64)> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        let mut lines = 0;
        for line in BufReader::new(file).split(b'\n') {
            let line = line?;
            lines += 1;
            if let Ok(r) = serde_json::from_slice::<Record>(&line) {
                records.push(r);
            }
        }
        Ok((records, lines))
    }

    /// Opens the journal for appending (created when missing); `lines` is what replay counted.
    pub fn open(path: &Path, lines: u64) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // A torn last line (crash mid-write) must not swallow the next record.
        let len = file.metadata()?.len();
        if len > 0 {
            let mut last = [0u8; 1];
            std::os::unix::fs::FileExt::read_exact_at(&file, &mut last, len - 1)?;
            if last[0] != b'\n' {
                file.write_all(b"\n")?;
            }
        }
        Ok(Self {
            path: path.to_owned(),
            file,
            lines,
        })
    }

    /// Lines written since the last compaction (replayed ones included).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// Appends records (one `write` for all of them).
    pub fn append(&mut self, records: &[Record]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(128 * records.len());
        for r in records {
            serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.lines = self.lines.saturating_add(records.len() as u64);
        Ok(())
    }

    /// Replaces the journal with `records` (the live state): temp file, fsync, rename, fsync
    /// of the directory, then reopens for appending.
    pub fn compact(&mut self, records: &[Record]) -> io::Result<()> {
        let tmp = self.path.with_extension("compact");
        {
            let mut f = File::create(&tmp)?;
            let mut buf = Vec::with_capacity(1 << 20);
            for r in records {
                serde_json::to_writer(&mut buf, r).map_err(io::Error::other)?;
                buf.push(b'\n');
                if buf.len() >= 1 << 20 {
                    f.write_all(&buf)?;
                    buf.clear();
                }
            }
            f.write_all(&buf)?;
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            super::layout::sync_dir(dir)?;
        }
        self.file = OpenOptions::new().append(true).open(&self.path)?;
        self.lines = records.len() as u64;
        Ok(())
    }

    /// Flushes appended lines to disk.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("dp-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn append_replay_and_torn_last_line() {
        let d = dir("torn");
        let p = d.join("journal");
        let mut j = Journal::open(&p, 0).unwrap();
        let a = Record::Public {
            r: "docker.io".into(),
            n: "library/alpine".into(),
            at: 5,
        };
        let b = Record::Evict {
            d: "sha256:00".into(),
        };
        j.append(&[a.clone(), b.clone()]).unwrap();
        drop(j);
        // A crash in the middle of a write leaves a torn line.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"t\":\"b\",\"r\":\"x").unwrap();
        let (records, lines) = Journal::replay(&p).unwrap();
        assert_eq!(records, vec![a.clone(), b]);
        assert_eq!(lines, 3);

        let mut j = Journal::open(&p, lines).unwrap();
        j.append(std::slice::from_ref(&a)).unwrap();
        let (records, _) = Journal::replay(&p).unwrap();
        assert_eq!(records.len(), 3, "the record after a torn line survives");
        j.compact(std::slice::from_ref(&a)).unwrap();
        assert_eq!(j.lines(), 1);
        j.append(std::slice::from_ref(&a)).unwrap();
        let (records, _) = Journal::replay(&p).unwrap();
        assert_eq!(records, vec![a.clone(), a]);
        let _ = fs::remove_dir_all(&d);
    }
}

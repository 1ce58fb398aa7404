//! Deterministic image content (TESTBED §2.2): layers are tar files with sorted entries, fixed
//! mtime and root ownership, filled from a seeded PRNG, gzipped with header mtime 0. Manifests are
//! serialised once and kept as bytes, so the digests tests compare are those of the exact bytes
//! pushed. Nothing here does I/O; [`crate::seed`] pushes it.

use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::error::{FixtureResult, unexpected};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config media type.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// OCI gzip layer media type.
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI uncompressed layer media type.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI 1.1 empty descriptor media type (`{}`).
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Docker schema2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker schema2 manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config media type.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// Docker gzip layer media type.
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// The `artifactType` of the seeded OCI artifact.
pub const ARTIFACT_TYPE: &str = "application/vnd.dockerproxy.test.artifact.v1";
/// Every manifest and index media type (an `Accept` that gets any manifest from distribution).
pub const ALL_MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The default size of the big layer: 100 MiB.
pub const DEFAULT_BIG_LAYER_SIZE: usize = 100 << 20;

const MTIME: u64 = 1_700_000_000;

/// A content-addressed object: a manifest, a config or a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// `sha256:<hex>` of `data`.
    pub digest: String,
    /// Media type.
    pub media_type: String,
    /// The exact bytes.
    pub data: Bytes,
}

impl Blob {
    /// Wraps bytes and computes their digest.
    pub fn new(media_type: &str, data: impl Into<Bytes>) -> Self {
        let data = data.into();
        Self {
            digest: sha256_digest(&data),
            media_type: media_type.to_owned(),
            data,
        }
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.data.len() as u64
    }

    /// The OCI descriptor `{mediaType, digest, size}`.
    pub fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size()})
    }

    /// The lowercase hex part of the digest.
    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }
}

/// A single-platform image: manifest, config and layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Repository name (`library/busybox`).
    pub repo: String,
    /// Tag; empty for an index child pushed by digest only.
    pub tag: String,
    /// The manifest.
    pub manifest: Blob,
    /// The config.
    pub config: Blob,
    /// The layers, in order.
    pub layers: Vec<Blob>,
    /// `sha256:` of each uncompressed layer tar.
    pub diff_ids: Vec<String>,
}

impl Image {
    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }

    /// Config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Blob> {
        std::iter::once(&self.config).chain(self.layers.iter())
    }
}

/// A multi-platform image: an OCI index or a Docker manifest list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Index {
    /// Repository name.
    pub repo: String,
    /// Tag.
    pub tag: String,
    /// The index / list itself.
    pub manifest: Blob,
    /// The per-platform images (amd64 first, then arm64), pushed by digest.
    pub children: Vec<Image>,
}

impl Index {
    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// Everything seeded, with every digest, so tests can verify what clients receive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeded {
    /// `library/busybox:latest`, OCI, 2 gzip layers.
    pub busybox: Image,
    /// `library/busybox:1.36`, OCI; shares its first layer with `busybox`.
    pub busybox_136: Image,
    /// `myorg/team/app:1.0`, OCI, nested name.
    pub app: Image,
    /// `library/multi:latest`, OCI index amd64 + arm64/v8.
    pub multi: Index,
    /// `library/dockerv2:latest`, Docker schema2 image.
    pub dockerv2: Image,
    /// `library/dockerlist:latest`, Docker schema2 manifest list amd64 + arm64/v8.
    pub dockerlist: Index,
    /// `library/big:latest`, one uncompressed layer of the configured size.
    pub big: Image,
    /// `library/artifact:v1`, OCI 1.1 artifact with `artifactType` and empty config.
    pub artifact: Image,
    /// `private/secret:1.0`, readable by alice only in token mode.
    pub private_secret: Image,
}

impl Seeded {
    /// Every tagged single-platform image.
    pub fn images(&self) -> Vec<&Image> {
        vec![
            &self.busybox,
            &self.busybox_136,
            &self.app,
            &self.dockerv2,
            &self.big,
            &self.artifact,
            &self.private_secret,
        ]
    }

    /// Every index / manifest list.
    pub fn indexes(&self) -> Vec<&Index> {
        vec![&self.multi, &self.dockerlist]
    }

    /// The manifest pushed under `repo:tag`, if any.
    pub fn manifest(&self, repo: &str, tag: &str) -> Option<&Blob> {
        let image = self
            .images()
            .into_iter()
            .find(|i| i.repo == repo && i.tag == tag);
        let index = self
            .indexes()
            .into_iter()
            .find(|i| i.repo == repo && i.tag == tag);
        image.map(|i| &i.manifest).or(index.map(|i| &i.manifest))
    }

    /// Finds any seeded object (manifest, child manifest, config, layer) by digest.
    pub fn blob(&self, digest: &str) -> Option<&Blob> {
        let children = self.indexes().into_iter().flat_map(|i| {
            std::iter::once(&i.manifest).chain(i.children.iter().flat_map(image_objects))
        });
        self.images()
            .into_iter()
            .flat_map(image_objects)
            .chain(children)
            .find(|b| b.digest == digest)
    }
}

fn image_objects(image: &Image) -> impl Iterator<Item = &Blob> {
    std::iter::once(&image.manifest).chain(image.blobs())
}

/// `sha256:<hex>` of bytes (ring's assembly SHA-256: fast even in unoptimised test builds).
pub fn sha256_digest(data: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, data);
    format!("sha256:{}", hex::encode(digest.as_ref()))
}

/// Deterministic PRNG for layer payloads: SplitMix64 words, ChaCha20 keystream for bulk bytes.
#[derive(Debug, Clone)]
pub struct Prng(u64);

impl Prng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// `len` pseudo-random bytes: the ChaCha20 keystream under a key drawn from this generator
    /// (ring's assembly runs at GB/s even in unoptimised test builds; a 100 MiB layer is common).
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut key = [0u8; 32];
        for chunk in key.chunks_exact_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let mut out = vec![0u8; len];
        let sealed = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &key)
            .map(ring::aead::LessSafeKey::new)
            .and_then(|key| {
                let nonce = ring::aead::Nonce::assume_unique_for_key([0u8; 12]);
                key.seal_in_place_separate_tag(nonce, ring::aead::Aad::empty(), &mut out)
            });
        if sealed.is_err() {
            // Not expected (fixed, valid key length); fall back to the slow generator.
            for chunk in out.chunks_mut(8) {
                let word = self.next_u64().to_le_bytes();
                chunk.copy_from_slice(&word[..chunk.len()]);
            }
        }
        out
    }
}

/// An entry of a generated layer.
#[derive(Debug, Clone)]
pub enum Entry {
    /// A directory (path without trailing slash).
    Dir(String),
    /// A regular file with mode and content.
    File(String, u32, Vec<u8>),
    /// A symbolic link `path -> target`.
    Symlink(String, String),
}

/// Builds a tar of `entries` (sorted by path, mtime 1700000000, uid/gid 0, `root`).
pub fn build_tar(mut entries: Vec<Entry>) -> FixtureResult<Vec<u8>> {
    let path_of = |e: &Entry| match e {
        Entry::Dir(p) | Entry::File(p, _, _) | Entry::Symlink(p, _) => p.clone(),
    };
    entries.sort_by_key(path_of);
    let total: usize = entries
        .iter()
        .map(|e| {
            if let Entry::File(_, _, d) = e {
                d.len() + 1024
            } else {
                512
            }
        })
        .sum();
    let mut builder = tar::Builder::new(Vec::with_capacity(total + 2048));
    for entry in &entries {
        let mut header = tar::Header::new_ustar();
        header.set_mtime(MTIME);
        header.set_uid(0);
        header.set_gid(0);
        header
            .set_username("root")
            .map_err(|e| unexpected(e.to_string()))?;
        header
            .set_groupname("root")
            .map_err(|e| unexpected(e.to_string()))?;
        match entry {
            Entry::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
            }
            Entry::File(path, mode, data) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_size(data.len() as u64);
                builder.append_data(&mut header, path, data.as_slice())?;
            }
            Entry::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_size(0);
                builder.append_link(&mut header, path, target)?;
            }
        }
    }
    Ok(builder.into_inner()?)
}

/// Gzips with header mtime 0 and level 6.
pub fn gzip(data: &[u8]) -> FixtureResult<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(6));
    encoder.write_all(data)?;
    Ok(encoder.finish()?)
}

/// A gzip layer of `media_type` from entries; returns the layer and its diff_id.
fn gz_layer(media_type: &str, entries: Vec<Entry>) -> FixtureResult<(Blob, String)> {
    let tar = build_tar(entries)?;
    let diff_id = sha256_digest(&tar);
    Ok((Blob::new(media_type, gzip(&tar)?), diff_id))
}

fn busybox_bin_entries() -> Vec<Entry> {
    let mut entries = vec![
        Entry::Dir("bin".into()),
        Entry::File("bin/busybox".into(), 0o755, Prng::new(1).bytes(64 * 1024)),
        Entry::Dir("etc".into()),
        Entry::File(
            "etc/passwd".into(),
            0o644,
            b"root:x:0:0:root:/root:/bin/sh\n".to_vec(),
        ),
        Entry::File("etc/group".into(), 0o644, b"root:x:0:\n".to_vec()),
    ];
    for applet in ["sh", "ls", "cat", "echo"] {
        entries.push(Entry::Symlink(format!("bin/{applet}"), "busybox".into()));
    }
    entries
}

fn text_layer(media_type: &str, path: &str, text: &str) -> FixtureResult<(Blob, String)> {
    let dir = path.rsplit_once('/').map(|(d, _)| d.to_owned());
    let mut entries: Vec<Entry> = dir.into_iter().map(Entry::Dir).collect();
    entries.push(Entry::File(
        path.to_owned(),
        0o644,
        text.as_bytes().to_vec(),
    ));
    gz_layer(media_type, entries)
}

/// Which manifest flavour an image is built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavour {
    Oci,
    Docker,
}

fn image(
    repo: &str,
    tag: &str,
    flavour: Flavour,
    arch: &str,
    layers: Vec<(Blob, String)>,
) -> FixtureResult<Image> {
    let (manifest_type, config_type) = match flavour {
        Flavour::Oci => (OCI_MANIFEST, OCI_CONFIG),
        Flavour::Docker => (DOCKER_MANIFEST, DOCKER_CONFIG),
    };
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.clone()).collect();
    let history: Vec<Value> = layers
        .iter()
        .map(|_| json!({"created": "2023-11-14T22:13:20Z", "created_by": "dockerproxy-tests seed"}))
        .collect();
    let mut config = json!({
        "created": "2023-11-14T22:13:20Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Cmd": ["sh"],
            "Labels": {"org.dockerproxy.test.ref": format!("{repo}:{tag}")},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": history,
    });
    if arch == "arm64" {
        config["variant"] = json!("v8");
    }
    let config = Blob::new(config_type, to_vec(&config)?);
    let layers: Vec<Blob> = layers.into_iter().map(|(b, _)| b).collect();
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": manifest_type,
        "config": config.descriptor(),
        "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
    });
    Ok(Image {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest: Blob::new(manifest_type, to_vec(&manifest)?),
        config,
        layers,
        diff_ids,
    })
}

fn index(repo: &str, tag: &str, flavour: Flavour) -> FixtureResult<Index> {
    let (index_type, layer_type) = match flavour {
        Flavour::Oci => (OCI_INDEX, OCI_LAYER_GZIP),
        Flavour::Docker => (DOCKER_LIST, DOCKER_LAYER),
    };
    let amd64_layers = vec![
        gz_layer(layer_type, busybox_bin_entries())?,
        text_layer(layer_type, "etc/motd", &format!("{repo} amd64\n"))?,
    ];
    let arm64_layers = vec![text_layer(
        layer_type,
        "etc/arch",
        &format!("{repo} fake arm64 layer\n"),
    )?];
    let children = vec![
        image(repo, "", flavour, "amd64", amd64_layers)?,
        image(repo, "", flavour, "arm64", arm64_layers)?,
    ];
    let platforms = [
        json!({"architecture": "amd64", "os": "linux"}),
        json!({"architecture": "arm64", "os": "linux", "variant": "v8"}),
    ];
    let entries: Vec<Value> = children
        .iter()
        .zip(platforms)
        .map(|(child, platform)| {
            let mut d = child.manifest.descriptor();
            d["platform"] = platform;
            d
        })
        .collect();
    let manifest = json!({"schemaVersion": 2, "mediaType": index_type, "manifests": entries});
    Ok(Index {
        repo: repo.to_owned(),
        tag: tag.to_owned(),
        manifest: Blob::new(index_type, to_vec(&manifest)?),
        children,
    })
}

fn artifact() -> FixtureResult<Image> {
    let config = Blob::new(OCI_EMPTY, &b"{}"[..]);
    let layer = Blob::new(
        "application/octet-stream",
        &b"hello from an OCI artifact\n"[..],
    );
    let mut config_desc = config.descriptor();
    config_desc["data"] = json!("e30=");
    let mut layer_desc = layer.descriptor();
    layer_desc["annotations"] = json!({"org.opencontainers.image.title": "hello.txt"});
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": ARTIFACT_TYPE,
        "config": config_desc,
        "layers": [layer_desc],
    });
    Ok(Image {
        repo: "library/artifact".into(),
        tag: "v1".into(),
        manifest: Blob::new(OCI_MANIFEST, to_vec(&manifest)?),
        config,
        diff_ids: vec![layer.digest.clone()],
        layers: vec![layer],
    })
}

fn big(size: usize) -> FixtureResult<Image> {
    let tar = build_tar(vec![
        Entry::Dir("data".into()),
        Entry::File("data/big.bin".into(), 0o644, Prng::new(42).bytes(size)),
    ])?;
    let layer = Blob::new(OCI_LAYER_TAR, tar);
    let diff_id = layer.digest.clone();
    image(
        "library/big",
        "latest",
        Flavour::Oci,
        "amd64",
        vec![(layer, diff_id)],
    )
}

/// Builds the whole image set with a big layer of `big_layer_size` payload bytes.
pub fn build(big_layer_size: usize) -> FixtureResult<Seeded> {
    let busybox_bin = gz_layer(OCI_LAYER_GZIP, busybox_bin_entries())?;
    let busybox = image(
        "library/busybox",
        "latest",
        Flavour::Oci,
        "amd64",
        vec![
            busybox_bin.clone(),
            text_layer(OCI_LAYER_GZIP, "etc/motd", "busybox latest\n")?,
        ],
    )?;
    let busybox_136 = image(
        "library/busybox",
        "1.36",
        Flavour::Oci,
        "amd64",
        vec![
            busybox_bin.clone(),
            text_layer(OCI_LAYER_GZIP, "etc/motd", "busybox 1.36\n")?,
        ],
    )?;
    let app = image(
        "myorg/team/app",
        "1.0",
        Flavour::Oci,
        "amd64",
        vec![
            busybox_bin,
            text_layer(OCI_LAYER_GZIP, "app/hello.txt", "hello from app 1.0\n")?,
        ],
    )?;
    let dockerv2 = image(
        "library/dockerv2",
        "latest",
        Flavour::Docker,
        "amd64",
        vec![
            gz_layer(DOCKER_LAYER, busybox_bin_entries())?,
            text_layer(DOCKER_LAYER, "etc/motd", "docker schema2\n")?,
        ],
    )?;
    let private_secret = image(
        "private/secret",
        "1.0",
        Flavour::Oci,
        "amd64",
        vec![text_layer(OCI_LAYER_GZIP, "secret.txt", "top secret\n")?],
    )?;
    Ok(Seeded {
        busybox,
        busybox_136,
        app,
        multi: index("library/multi", "latest", Flavour::Oci)?,
        dockerv2,
        dockerlist: index("library/dockerlist", "latest", Flavour::Docker)?,
        big: big(big_layer_size)?,
        artifact: artifact()?,
        private_secret,
    })
}

/// [`build`], memoised per size for the life of the test process (the big layer takes time).
pub fn build_cached(big_layer_size: usize) -> FixtureResult<Seeded> {
    static CACHE: OnceLock<Mutex<Vec<(usize, Seeded)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(Vec::new()));
    let mut cache = cache
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, seeded)) = cache.iter().find(|(size, _)| *size == big_layer_size) {
        return Ok(seeded.clone());
    }
    let seeded = build(big_layer_size)?;
    cache.push((big_layer_size, seeded.clone()));
    Ok(seeded)
}

fn to_vec(value: &Value) -> FixtureResult<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| unexpected(format!("json: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_is_deterministic_and_consistent() {
        let a = build(1000).expect("build");
        let b = build(1000).expect("build");
        assert_eq!(a, b);
        // Shared first layer, different second layer.
        assert_eq!(a.busybox.layers[0].digest, a.busybox_136.layers[0].digest);
        assert_ne!(a.busybox.manifest.digest, a.busybox_136.manifest.digest);
        // Manifest references match the blobs.
        let m: Value = serde_json::from_slice(&a.busybox.manifest.data).expect("json");
        assert_eq!(m["config"]["digest"], json!(a.busybox.config.digest));
        assert_eq!(m["layers"][1]["size"], json!(a.busybox.layers[1].size()));
        // diff_id = sha256 of the uncompressed tar.
        let mut tar = Vec::new();
        std::io::Read::read_to_end(
            &mut flate2::read::GzDecoder::new(&a.busybox.layers[0].data[..]),
            &mut tar,
        )
        .expect("gunzip");
        assert_eq!(sha256_digest(&tar), a.busybox.diff_ids[0]);
        // Big layer: an uncompressed tar holding the payload.
        assert!(a.big.layers[0].size() > 1000);
        assert_eq!(a.big.layers[0].media_type, OCI_LAYER_TAR);
        // Index platforms.
        let idx: Value = serde_json::from_slice(&a.multi.manifest.data).expect("json");
        assert_eq!(
            idx["manifests"][1]["platform"]["architecture"],
            json!("arm64")
        );
        assert_eq!(
            idx["manifests"][0]["digest"],
            json!(a.multi.children[0].manifest.digest)
        );
        assert_eq!(
            a.blob(&a.dockerlist.children[1].config.digest)
                .map(|b| b.media_type.as_str()),
            Some(DOCKER_CONFIG)
        );
        assert_eq!(
            a.manifest("library/artifact", "v1").map(|b| &b.digest),
            Some(&a.artifact.manifest.digest)
        );
    }

    #[test]
    fn empty_config_digest_is_the_well_known_one() {
        assert_eq!(
            Blob::new(OCI_EMPTY, &b"{}"[..]).digest,
            "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }
}

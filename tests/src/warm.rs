//! Warm pulls by real clients (issue 4): each helper pulls one image through the proxy with a
//! client whose local store is brand new (a fresh directory, a fresh daemon), so every byte the
//! client gets comes from the proxy; the test compares the upstream registry's access log before
//! and after. The daemons and clients themselves are those of [`crate::clients`].

use std::path::Path;
use std::process::Command;

use crate::clients::{
    Containerd, Dockerd, HostsNamespace, StartError, parse_ctr_images, run_ok,
    write_containerd_mirror,
};
use crate::content::{Image, sha256_digest};
use crate::error::{FixtureResult, unexpected};
use crate::registry::Registry;

/// Every `GET …/blobs/sha256:…` in the registry's access log (path with query).
pub fn blob_gets(registry: &Registry) -> Vec<String> {
    registry
        .upstream_requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.contains("/blobs/sha256:"))
        .map(|(_, p)| p)
        .collect()
}

/// Every `GET …/manifests/…` in the registry's access log (path with query).
pub fn manifest_gets(registry: &Registry) -> Vec<String> {
    registry
        .upstream_requests()
        .into_iter()
        .filter(|(m, p)| m == "GET" && p.contains("/manifests/"))
        .map(|(_, p)| p)
        .collect()
}

/// Every request for a manifest or a blob (any method) in the registry's access log, as
/// `METHOD path`.
pub fn image_requests(registry: &Registry) -> Vec<String> {
    registry
        .upstream_requests()
        .into_iter()
        .filter(|(_, p)| p.contains("/manifests/") || p.contains("/blobs/"))
        .map(|(m, p)| format!("{m} {p}"))
        .collect()
}

/// `skopeo copy docker://SOURCE dir:OUT` (plain HTTP allowed) inside `ns`, with its temporary
/// files under `OUT.tmp`; then checks the manifest and every blob of `image` in `OUT`.
pub async fn skopeo_pull(
    ns: &HostsNamespace,
    source: &str,
    out: &Path,
    image: &Image,
) -> FixtureResult<()> {
    let tmpdir = out.with_extension("tmp");
    std::fs::create_dir_all(&tmpdir)?;
    let mut cmd = Command::new("skopeo");
    cmd.env("TMPDIR", &tmpdir)
        .args(["--insecure-policy", "copy", "--src-tls-verify=false"])
        .arg(format!("docker://{source}"))
        .arg(format!("dir:{}", out.display()));
    run_ok(ns.wrap(&cmd)).await?;
    let manifest = std::fs::read(out.join("manifest.json"))?;
    if sha256_digest(&manifest) != image.manifest.digest {
        return Err(unexpected(format!(
            "skopeo got manifest {} instead of {}",
            sha256_digest(&manifest),
            image.manifest.digest
        )));
    }
    for blob in image.blobs() {
        let data = std::fs::read(out.join(blob.hex()))?;
        if sha256_digest(&data) != blob.digest {
            return Err(unexpected(format!(
                "skopeo got wrong bytes for {}",
                blob.digest
            )));
        }
    }
    Ok(())
}

/// What a fresh dockerd pulled: `RepoDigests[0]` and the image ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerPulled {
    /// `name@sha256:…`.
    pub repo_digest: String,
    /// `sha256:<config digest>`.
    pub id: String,
}

/// Starts a dockerd on the empty directory `dir` with `mirror` (`http://127.0.0.1:PORT`) as its
/// only registry mirror, pulls `name` (a Docker Hub short name such as `busybox:latest`), reads
/// what it pulled and stops the daemon.
pub async fn dockerd_pull_fresh(
    dir: &Path,
    ns: &HostsNamespace,
    mirror: &str,
    name: &str,
) -> Result<DockerPulled, StartError> {
    let insecure = mirror
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .to_owned();
    let mut dockerd = Dockerd::start(dir, ns, &[mirror.to_owned()], &[insecure]).await?;
    let result = async {
        run_ok(dockerd.docker(&["pull", name])).await?;
        let repo_digest = run_ok(dockerd.docker(&[
            "image",
            "inspect",
            "--format",
            "{{index .RepoDigests 0}}",
            name,
        ]))
        .await?;
        let id = run_ok(dockerd.docker(&["image", "inspect", "--format", "{{.Id}}", name])).await?;
        Ok::<_, crate::error::FixtureError>(DockerPulled { repo_digest, id })
    }
    .await;
    result.map_err(|e| {
        StartError::Fixture(unexpected(format!(
            "{e}\ndockerd log tail:\n{}",
            dockerd.daemon().log_tail(30)
        )))
    })
}

/// Starts a containerd on the empty directory `dir` whose `hosts.toml` makes `mirror`
/// (`http://127.0.0.1:PORT`) the pull host of `docker.io`, pulls `reference`
/// (`docker.io/library/busybox:latest`) with ctr in namespace `test`, and returns the target
/// digest `ctr images ls` shows. The daemon stops when this returns.
pub async fn ctr_pull_fresh(
    dir: &Path,
    ns: &HostsNamespace,
    mirror: &str,
    reference: &str,
) -> FixtureResult<String> {
    let mut containerd = Containerd::start(&dir.join("c"), ns).await?;
    let hosts_dir = dir.join("certs.d");
    write_containerd_mirror(
        &hosts_dir,
        "docker.io",
        "https://registry-1.docker.io",
        mirror,
    )?;
    let hosts_dir = hosts_dir.display().to_string();
    let pulled = run_ok(containerd.ctr(
        "test",
        &[
            "images",
            "pull",
            "--hosts-dir",
            &hosts_dir,
            "--snapshotter",
            "native",
            reference,
        ],
    ))
    .await;
    if let Err(e) = pulled {
        return Err(unexpected(format!(
            "{e}\ncontainerd log tail:\n{}",
            containerd.daemon().log_tail(20)
        )));
    }
    let listing = run_ok(containerd.ctr("test", &["images", "ls"])).await?;
    parse_ctr_images(&listing)
        .into_iter()
        .find(|(name, _, _)| name == reference)
        .map(|(_, _, digest)| digest)
        .ok_or_else(|| unexpected(format!("{reference} not in ctr images ls:\n{listing}")))
}

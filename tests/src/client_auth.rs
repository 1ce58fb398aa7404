//! Credential-aware variations of the client helpers in [`crate::clients`], for the client ×
//! scenario matrix (tests/client_matrix.rs): pulls with and without credentials that return the
//! digest the client recorded, pulls that must fail (returning the client's error text), and the
//! Docker CLI's credential store (`docker login`, and copying a login to the Docker Hub key so
//! Docker Engine sends it to a `registry-mirrors` mirror, moby #42022).
//!
//! Like [`crate::clients`], nothing here touches a global file or stops a process it did not
//! start.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use serde_json::Value;

use crate::clients::{Containerd, Dockerd, Podman, describe, parse_ctr_images, run, run_ok};
use crate::error::{FixtureResult, unexpected};

/// A user name and password handed to a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Creds<'a> {
    /// User name.
    pub user: &'a str,
    /// Password.
    pub password: &'a str,
}

impl Creds<'_> {
    /// `user:password`, as podman `--creds` and ctr `--user` take it.
    pub fn pair(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// alice, who may read everything, `private/*` included (TESTBED seeding, token server policy).
pub const ALICE: Creds<'static> = Creds {
    user: "alice",
    password: "secret",
};

/// The key under which the Docker CLI stores Docker Hub credentials (`docker login` with no
/// server). The CLI sends that entry with every pull of a Docker Hub image, and Docker Engine
/// 20.10 forwards it to its `registry-mirrors` too.
pub const DOCKER_HUB_AUTH_KEY: &str = "https://index.docker.io/v1/";

/// Runs `cmd` and expects it to fail: returns its stdout and stderr joined, or an error when it
/// succeeded (or timed out).
pub async fn run_fails(cmd: Command) -> FixtureResult<String> {
    let shown = describe(&cmd);
    let out = run(cmd).await?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    if out.status.success() {
        return Err(unexpected(format!(
            "{shown} succeeded but was expected to fail:\n{text}"
        )));
    }
    Ok(text)
}

/// The arguments of `podman pull --tls-verify=false [--creds user:password] REF`.
fn podman_pull_args(reference: &str, creds: Option<Creds<'_>>) -> Vec<String> {
    let mut args = vec!["pull".to_owned(), "--tls-verify=false".to_owned()];
    if let Some(c) = creds {
        args.push("--creds".to_owned());
        args.push(c.pair());
    }
    args.push(reference.to_owned());
    args
}

/// `podman pull --tls-verify=false [--creds user:password] REF`, then the manifest digest podman
/// recorded for `REF`.
pub async fn podman_pull(
    podman: &Podman,
    reference: &str,
    creds: Option<Creds<'_>>,
) -> FixtureResult<String> {
    let args = podman_pull_args(reference, creds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(podman.command(&args)).await?;
    podman.image_digest(reference).await
}

/// Like [`podman_pull`] but the pull must fail; returns podman's output.
pub async fn podman_pull_fails(
    podman: &Podman,
    reference: &str,
    creds: Option<Creds<'_>>,
) -> FixtureResult<String> {
    let args = podman_pull_args(reference, creds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_fails(podman.command(&args)).await
}

/// The arguments of `ctr images pull --hosts-dir DIR --snapshotter native [--user u:p] REF`.
fn ctr_pull_args(hosts_dir: &Path, reference: &str, creds: Option<Creds<'_>>) -> Vec<String> {
    let mut args = vec![
        "images".to_owned(),
        "pull".to_owned(),
        "--hosts-dir".to_owned(),
        hosts_dir.display().to_string(),
        "--snapshotter".to_owned(),
        "native".to_owned(),
    ];
    if let Some(c) = creds {
        args.push("--user".to_owned());
        args.push(c.pair());
    }
    args.push(reference.to_owned());
    args
}

/// `ctr -n NAMESPACE images pull --hosts-dir DIR --snapshotter native [--user user:password]
/// REF` (a `hosts.toml` mirror written by [`crate::clients::write_containerd_mirror`] sends
/// `?ns=` on every request), then the target digest `ctr images ls` lists for `REF`.
pub async fn ctr_pull(
    containerd: &Containerd,
    namespace: &str,
    hosts_dir: &Path,
    reference: &str,
    creds: Option<Creds<'_>>,
) -> FixtureResult<String> {
    let args = ctr_pull_args(hosts_dir, reference, creds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_ok(containerd.ctr(namespace, &args)).await?;
    let listing = run_ok(containerd.ctr(namespace, &["images", "ls"])).await?;
    parse_ctr_images(&listing)
        .into_iter()
        .find(|(name, _, _)| name == reference)
        .map(|(_, _, digest)| digest)
        .ok_or_else(|| unexpected(format!("{reference} not in ctr images ls:\n{listing}")))
}

/// Like [`ctr_pull`] but the pull must fail; returns ctr's output.
pub async fn ctr_pull_fails(
    containerd: &Containerd,
    namespace: &str,
    hosts_dir: &Path,
    reference: &str,
    creds: Option<Creds<'_>>,
) -> FixtureResult<String> {
    let args = ctr_pull_args(hosts_dir, reference, creds);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_fails(containerd.ctr(namespace, &args)).await
}

/// The Docker CLI configuration directory of a [`Dockerd`] started with `dir` (its layout:
/// `dir/cli`). [`copy_docker_auth`] checks that `config.json` is really there.
pub fn docker_cli_config_dir(dockerd_dir: &Path) -> PathBuf {
    dockerd_dir.join("cli")
}

/// `docker login SERVER -u USER -p PASSWORD` (the daemon pings SERVER and, with a token
/// registry, asks its realm for a token; the CLI then stores the credentials in its
/// configuration directory).
pub async fn docker_login(dockerd: &Dockerd, server: &str, creds: Creds<'_>) -> FixtureResult<()> {
    run_ok(dockerd.docker(&["login", server, "-u", creds.user, "-p", creds.password]))
        .await
        .map(drop)
}

/// Copies the stored `docker login` entry of `from` to the key `to` in `cli_config/config.json`
/// (e.g. to [`DOCKER_HUB_AUTH_KEY`]: the well-known way to make Docker Engine send a mirror's
/// credentials, which it only does with the Docker Hub entry, moby #18818 / #42022).
pub fn copy_docker_auth(cli_config: &Path, from: &str, to: &str) -> FixtureResult<()> {
    let path = cli_config.join("config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| unexpected(format!("cannot read {}: {e}", path.display())))?;
    let mut config: Value = serde_json::from_str(&text)
        .map_err(|e| unexpected(format!("{} is not JSON: {e}", path.display())))?;
    let auths = config
        .get_mut("auths")
        .and_then(Value::as_object_mut)
        .ok_or_else(|| unexpected(format!("no \"auths\" in {}: {text}", path.display())))?;
    let entry = auths
        .get(from)
        .cloned()
        .ok_or_else(|| unexpected(format!("no login for {from} in {}: {text}", path.display())))?;
    auths.insert(to.to_owned(), entry);
    let out = serde_json::to_string_pretty(&config)
        .map_err(|e| unexpected(format!("cannot write {}: {e}", path.display())))?;
    std::fs::write(&path, out)?;
    Ok(())
}

/// Writes a Docker CLI credential entry for `server` by hand (`auth` = base64 `user:password`),
/// creating `cli_config/config.json` when needed and keeping other entries.
pub fn write_docker_auth(cli_config: &Path, server: &str, creds: Creds<'_>) -> FixtureResult<()> {
    std::fs::create_dir_all(cli_config)?;
    let path = cli_config.join("config.json");
    let mut config: Value = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .map_err(|e| unexpected(format!("{} is not JSON: {e}", path.display())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(e.into()),
    };
    let auth = base64::engine::general_purpose::STANDARD.encode(creds.pair());
    let root = config
        .as_object_mut()
        .ok_or_else(|| unexpected(format!("{} is not a JSON object", path.display())))?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| unexpected(format!("\"auths\" in {} is not an object", path.display())))?;
    auths.insert(server.to_owned(), serde_json::json!({ "auth": auth }));
    let out = serde_json::to_string_pretty(&config)
        .map_err(|e| unexpected(format!("cannot write {}: {e}", path.display())))?;
    std::fs::write(&path, out)?;
    Ok(())
}

/// What Docker Engine recorded for a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerImage {
    /// `RepoDigests` (`name@sha256:…`, one per repository the image was pulled from).
    pub repo_digests: Vec<String>,
    /// The image ID (the config digest).
    pub id: String,
}

impl DockerImage {
    /// Whether some repo digest names `digest`.
    pub fn has_digest(&self, digest: &str) -> bool {
        self.repo_digests
            .iter()
            .any(|d| d.rsplit_once('@').is_some_and(|(_, dg)| dg == digest))
    }
}

/// `docker pull REF`, then `docker image inspect REF` (repo digests and ID).
pub async fn docker_pull(dockerd: &Dockerd, reference: &str) -> FixtureResult<DockerImage> {
    run_ok(dockerd.docker(&["pull", reference])).await?;
    docker_inspect(dockerd, reference).await
}

/// `docker image inspect REF`: repo digests and ID.
pub async fn docker_inspect(dockerd: &Dockerd, reference: &str) -> FixtureResult<DockerImage> {
    let text = run_ok(dockerd.docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}} {{.Id}}",
        reference,
    ]))
    .await?;
    let (json, id) = text
        .rsplit_once(' ')
        .ok_or_else(|| unexpected(format!("unexpected docker image inspect output: {text}")))?;
    let repo_digests: Vec<String> =
        serde_json::from_str(json).map_err(|e| unexpected(format!("RepoDigests {json:?}: {e}")))?;
    Ok(DockerImage {
        repo_digests,
        id: id.to_owned(),
    })
}

/// Like [`docker_pull`] but the pull must fail; returns the CLI's output.
pub async fn docker_pull_fails(dockerd: &Dockerd, reference: &str) -> FixtureResult<String> {
    run_fails(dockerd.docker(&["pull", reference])).await
}

/// `docker rmi -f REF…` (so the next pull of the same content fetches every blob again).
pub async fn docker_rmi(dockerd: &Dockerd, references: &[&str]) -> FixtureResult<()> {
    let mut args = vec!["rmi", "-f"];
    args.extend_from_slice(references);
    run_ok(dockerd.docker(&args)).await.map(drop)
}

/// Whether a client's error text says the registry refused it for lack of authorisation
/// ("unauthorized", "denied", "forbidden", "authentication required", "authorization failed";
/// bare status numbers are not matched: a port number could contain them).
pub fn is_auth_refusal(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "unauthorized",
        "denied",
        "forbidden",
        "authentication required",
        "authorization failed",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_auth_is_written_and_copied() {
        let dir = tempfile::tempdir().unwrap();
        write_docker_auth(dir.path(), "127.0.0.1:5000", ALICE).unwrap();
        copy_docker_auth(dir.path(), "127.0.0.1:5000", DOCKER_HUB_AUTH_KEY).unwrap();
        let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
        let config: Value = serde_json::from_str(&text).unwrap();
        let want = "YWxpY2U6c2VjcmV0"; // base64("alice:secret")
        assert_eq!(config["auths"]["127.0.0.1:5000"]["auth"], want);
        assert_eq!(config["auths"][DOCKER_HUB_AUTH_KEY]["auth"], want);
        assert!(copy_docker_auth(dir.path(), "other:1", "x").is_err());
    }

    #[test]
    fn pull_arguments_carry_credentials_only_when_given() {
        assert_eq!(
            podman_pull_args("r:1", Some(ALICE)),
            [
                "pull",
                "--tls-verify=false",
                "--creds",
                "alice:secret",
                "r:1"
            ]
        );
        assert_eq!(
            podman_pull_args("r:1", None),
            ["pull", "--tls-verify=false", "r:1"]
        );
        let args = ctr_pull_args(Path::new("/h"), "docker.io/x:1", Some(ALICE));
        assert_eq!(
            &args[4..],
            [
                "--snapshotter",
                "native",
                "--user",
                "alice:secret",
                "docker.io/x:1"
            ]
        );
    }

    #[test]
    fn auth_refusals_are_recognised() {
        assert!(is_auth_refusal(
            "Error: reading manifest 1.0: unauthorized: authentication required"
        ));
        assert!(is_auth_refusal("pull access denied for private/secret"));
        assert!(!is_auth_refusal(
            "dial tcp 127.0.0.1:40123: connection refused"
        ));
        let image = DockerImage {
            repo_digests: vec!["busybox@sha256:ab".into()],
            id: "sha256:cd".into(),
        };
        assert!(image.has_digest("sha256:ab"));
        assert!(!image.has_digest("sha256:cd"));
    }
}

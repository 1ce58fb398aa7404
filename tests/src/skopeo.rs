//! skopeo as the test client: `copy docker://<src> dir:<out>` and the check that what landed is
//! byte-for-byte the seeded image (skopeo itself verifies every blob against its digest).

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use crate::content::{Image, sha256_digest};

/// Runs `skopeo --insecure-policy <args>`, killed after two minutes.
///
/// # Panics
/// When skopeo cannot be started or times out.
pub async fn run(args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new("skopeo");
    cmd.arg("--insecure-policy").args(args).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("skopeo timed out")
        .expect("run skopeo")
}

/// `skopeo copy --src-tls-verify=false [extra] docker://<src> dir:<out>` (plain-HTTP source).
pub async fn pull(src: &str, out: &Path, extra: &[&str]) -> Output {
    let src = format!("docker://{src}");
    let dest = format!("dir:{}", out.display());
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&src);
    args.push(&dest);
    run(&args).await
}

/// Asserts the pull succeeded and `dir` holds exactly the seeded manifest, config and layers.
/// `context` is appended to the failure message (a server log, for example).
///
/// # Panics
/// On any difference.
pub fn assert_pulled(out: &Output, dir: &Path, image: &Image, context: &str) {
    assert!(
        out.status.success(),
        "skopeo failed: {}{context}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read(dir.join("manifest.json")).expect("manifest.json");
    assert_eq!(
        sha256_digest(&manifest),
        image.manifest.digest,
        "manifest bytes differ from the seeded ones"
    );
    for blob in image.layers.iter().chain(std::iter::once(&image.config)) {
        let data = std::fs::read(dir.join(blob.hex())).expect("blob file");
        assert_eq!(sha256_digest(&data), blob.digest);
    }
}

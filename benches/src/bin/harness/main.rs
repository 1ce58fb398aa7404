//! The side-by-side load harness of issue 7: dockerproxy against distribution's proxy mode,
//! nginx `proxy_cache` and nginx static (sendfile), over one seeded `docker-registry` upstream
//! and a slow-link relay. See `benches/harness/README.md`; run it with
//! `bash benches/harness/run.sh`.
//!
//! ```text
//! harness [--rounds N] [--heavy-rounds N] [--wrk-secs S] [--only a,b] [--dockerproxy PATH]
//!         [--work DIR] [--md-out FILE] [--json-out FILE] [--ours-env K=V]
//! ```
//! Scenarios: `manifest`, `blob1`, `rss64`, `cold50`, `slow10`, `tags`.

mod contenders;
mod load;
mod procs;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use dockerproxy_benches::relay::{LinkSpec, Relay};
use dockerproxy_tests::content::{Blob, OCI_CONFIG, OCI_LAYER_TAR, OCI_MANIFEST, Prng};
use dockerproxy_tests::{PushAuth, Pusher, Registry, RegistryAuth, RegistryConfig};

use crate::contenders::Env;

/// Command-line options.
#[derive(Debug, Clone)]
pub(crate) struct Args {
    /// Rounds of the cheap scenarios (manifest, blob1).
    pub(crate) rounds: usize,
    /// Rounds of the heavy ones (rss64, cold50, slow10, tags).
    pub(crate) heavy_rounds: usize,
    /// Seconds per wrk run.
    pub(crate) wrk_secs: u32,
    /// Scenarios to run (all when empty).
    pub(crate) only: Vec<String>,
    /// dockerproxy binary.
    pub(crate) dockerproxy: PathBuf,
    /// Scratch directory.
    pub(crate) work: Option<PathBuf>,
    /// Where to write the Markdown table.
    pub(crate) md_out: Option<PathBuf>,
    /// Where to append the JSON line.
    pub(crate) json_out: Option<PathBuf>,
    /// Size of the big blob.
    pub(crate) blob_mib: usize,
    /// Extra environment for dockerproxy (`--ours-env K=V`, repeatable; e.g. `RUST_LOG=warn`).
    pub(crate) ours_env: Vec<(String, String)>,
}

fn parse_args() -> Result<Args, String> {
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".to_owned());
    let mut a = Args {
        rounds: 5,
        heavy_rounds: 3,
        wrk_secs: 5,
        only: Vec::new(),
        dockerproxy: PathBuf::from(target).join("release/dockerproxy"),
        work: None,
        md_out: None,
        json_out: None,
        blob_mib: 256,
        ours_env: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => a.rounds = val()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            "--heavy-rounds" => {
                a.heavy_rounds = val()?.parse().map_err(|e| format!("--heavy-rounds: {e}"))?;
            }
            "--wrk-secs" => a.wrk_secs = val()?.parse().map_err(|e| format!("--wrk-secs: {e}"))?,
            "--blob-mib" => a.blob_mib = val()?.parse().map_err(|e| format!("--blob-mib: {e}"))?,
            "--only" => a.only = val()?.split(',').map(str::to_owned).collect(),
            "--dockerproxy" => a.dockerproxy = PathBuf::from(val()?),
            "--ours-env" => {
                let v = val()?;
                let (k, v) = v.split_once('=').ok_or("--ours-env needs K=V")?;
                a.ours_env.push((k.to_owned(), v.to_owned()));
            }
            "--work" => a.work = Some(PathBuf::from(val()?)),
            "--md-out" => a.md_out = Some(PathBuf::from(val()?)),
            "--json-out" => a.json_out = Some(PathBuf::from(val()?)),
            "-h" | "--help" => {
                println!(
                    "harness [--rounds N] [--heavy-rounds N] [--wrk-secs S] [--blob-mib M] \
                     [--only manifest,blob1,rss64,cold50,slow10,tags] [--dockerproxy PATH] \
                     [--work DIR] [--md-out FILE] [--json-out FILE] [--ours-env K=V]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if a.rounds == 0 || a.heavy_rounds == 0 {
        return Err("rounds must be at least 1".to_owned());
    }
    Ok(a)
}

/// Everything the scenarios share.
pub(crate) struct Bed {
    /// Options.
    pub(crate) args: Args,
    /// Contender environment.
    pub(crate) env: Env,
    /// The seeded upstream.
    pub(crate) upstream: Registry,
    /// The slow link in front of it.
    pub(crate) relay: Relay,
    /// Repository of the big image.
    pub(crate) repo: String,
    /// Digest and size of the big blob.
    pub(crate) blob_digest: String,
    /// Size of the big blob.
    pub(crate) blob_size: u64,
    /// The big image's manifest.
    pub(crate) manifest: Blob,
    /// Tag of the big image.
    pub(crate) tag: String,
    /// Repository and tags of the small images (tag scenario).
    pub(crate) small_repo: String,
    /// Tags of the small images.
    pub(crate) small_tags: Vec<String>,
}

impl Bed {
    /// Upstream address (direct).
    pub(crate) fn upstream_addr(&self) -> SocketAddr {
        self.upstream.addr()
    }
}

fn config_blob(seed: &str, layer: &Blob) -> Blob {
    let diff = layer.digest.clone();
    let json = serde_json::json!({
        "created": "2023-11-14T22:13:20Z", "architecture": "amd64", "os": "linux",
        "config": {"Env": [format!("SEED={seed}")], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff]},
    });
    Blob::new(OCI_CONFIG, json.to_string().into_bytes())
}

fn manifest_blob(config: &Blob, layer: &Blob) -> Blob {
    let json = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": config.descriptor(), "layers": [layer.descriptor()],
    });
    Blob::new(OCI_MANIFEST, json.to_string().into_bytes())
}

async fn setup(args: Args) -> Result<Bed, String> {
    let work = match &args.work {
        Some(w) => w.clone(),
        None => std::env::temp_dir().join(format!("dp-bench-{}", std::process::id())),
    };
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    if !args.dockerproxy.exists() {
        return Err(format!(
            "{} not found: cargo build --release -p dockerproxy-server",
            args.dockerproxy.display()
        ));
    }
    for tool in [
        "wrk",
        "curl",
        "taskset",
        "/usr/sbin/nginx",
        "/usr/bin/docker-registry",
    ] {
        let found = if tool.starts_with('/') {
            std::path::Path::new(tool).exists()
        } else {
            dockerproxy_tests::find_tool(tool).is_some()
        };
        if !found {
            return Err(format!(
                "{tool} is missing (bash benches/harness/run.sh installs it)"
            ));
        }
    }
    let upstream = Registry::start(RegistryConfig {
        storage: work.join("upstream-storage"),
        work_dir: work.join("upstream"),
        tls: None,
        auth: RegistryAuth::None,
    })
    .await
    .map_err(|e| format!("upstream: {e}"))?;
    procs::record_pid(upstream.pid());
    eprintln!("upstream docker-registry on {}", upstream.addr());

    let repo = "library/bench".to_owned();
    let tag = "latest".to_owned();
    let big = Blob::new(OCI_LAYER_TAR, Prng::new(7).bytes(args.blob_mib << 20));
    let config = config_blob("big", &big);
    let manifest = manifest_blob(&config, &big);
    let mut pusher = Pusher::new(upstream.base_url(), PushAuth::None).map_err(|e| e.to_string())?;
    pusher
        .push_blob(&repo, &config)
        .await
        .map_err(|e| e.to_string())?;
    pusher
        .push_blob(&repo, &big)
        .await
        .map_err(|e| e.to_string())?;
    pusher
        .push_manifest(&repo, &tag, &manifest)
        .await
        .map_err(|e| e.to_string())?;
    let small_repo = "library/small".to_owned();
    let small_tags = vec!["t1".to_owned(), "t2".to_owned()];
    for (i, t) in small_tags.iter().enumerate() {
        let layer = Blob::new(OCI_LAYER_TAR, Prng::new(100 + i as u64).bytes(4096));
        let cfg = config_blob(t, &layer);
        let m = manifest_blob(&cfg, &layer);
        pusher
            .push_blob(&small_repo, &layer)
            .await
            .map_err(|e| e.to_string())?;
        pusher
            .push_blob(&small_repo, &cfg)
            .await
            .map_err(|e| e.to_string())?;
        pusher
            .push_manifest(&small_repo, t, &m)
            .await
            .map_err(|e| e.to_string())?;
    }
    // The static root: the same bytes under the same URL paths.
    let static_root = work.join("static");
    let blobs = static_root.join("v2").join(&repo).join("blobs");
    let manifests = static_root.join("v2").join(&repo).join("manifests");
    std::fs::create_dir_all(&blobs).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&manifests).map_err(|e| e.to_string())?;
    std::fs::write(blobs.join(&big.digest), &big.data).map_err(|e| e.to_string())?;
    std::fs::write(manifests.join(&tag), &manifest.data).map_err(|e| e.to_string())?;
    std::fs::write(manifests.join(&manifest.digest), &manifest.data).map_err(|e| e.to_string())?;
    eprintln!(
        "seeded {repo}:{tag} ({} MiB blob {})",
        args.blob_mib, big.digest
    );

    let relay = Relay::start(upstream.addr(), LinkSpec::default())
        .await
        .map_err(|e| format!("relay: {e}"))?;
    eprintln!("slow relay (100 MB/s, +20 ms) on {}", relay.addr());
    let env = Env {
        work,
        dockerproxy: args.dockerproxy.clone(),
        static_root,
        core: 0,
        ours_env: args.ours_env.clone(),
    };
    Ok(Bed {
        env,
        upstream,
        relay,
        repo,
        blob_digest: big.digest.clone(),
        blob_size: big.size(),
        manifest,
        tag,
        small_repo,
        small_tags,
        args,
    })
}

fn date() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("harness: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("harness: runtime: {e}");
            return std::process::ExitCode::from(1);
        }
    };
    let result = rt.block_on(run(args));
    procs::kill_all_recorded();
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("harness: {e}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let started = date();
    let load_start = procs::loadavg();
    let md_out = args.md_out.clone();
    let json_out = args.json_out.clone();
    let work_given = args.work.is_some();
    let bed = setup(args).await?;
    let mut metrics = Vec::new();
    let mut checks = Vec::new();
    let mut loads = vec![("start".to_owned(), load_start)];
    for name in scenarios::ALL {
        if !bed.args.only.is_empty() && !bed.args.only.iter().any(|o| o == name) {
            continue;
        }
        eprintln!("== {name} (load {})", procs::loadavg());
        loads.push((name.to_string(), procs::loadavg()));
        let (m, c) = scenarios::run(name, &bed).await?;
        metrics.extend(m);
        checks.extend(c);
    }
    loads.push(("end".to_owned(), procs::loadavg()));
    let md = report::markdown(&metrics, &checks);
    let load_text: Vec<String> = loads.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let header = format!(
        "date {started}; rounds {} (heavy {}); wrk {} s; blob {} MiB; load average (1/5/15 min) {}\n\n",
        bed.args.rounds,
        bed.args.heavy_rounds,
        bed.args.wrk_secs,
        bed.args.blob_mib,
        load_text.join("; ")
    );
    println!("\n{header}{md}");
    let meta = serde_json::json!({
        "date": started, "rounds": bed.args.rounds, "heavy_rounds": bed.args.heavy_rounds,
        "wrk_secs": bed.args.wrk_secs, "blob_mib": bed.args.blob_mib,
        "loadavg": loads.iter().map(|(k, v)| serde_json::json!({"at": k, "load": v})).collect::<Vec<_>>(),
    });
    let json = report::json_line(meta, &metrics, &checks);
    println!("{json}");
    if let Some(p) = md_out {
        std::fs::write(&p, format!("{header}{md}")).map_err(|e| format!("{}: {e}", p.display()))?;
    }
    if let Some(p) = json_out {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .map_err(|e| format!("{}: {e}", p.display()))?;
        let _ = writeln!(f, "{json}");
    }
    let work = bed.env.work.clone();
    drop(bed);
    if !work_given {
        let _ = std::fs::remove_dir_all(&work);
    }
    Ok(())
}

//! Issue 9 end to end: three `dockerproxy` processes sharing one real Garage store, in front of a
//! real `docker-registry` behind a slow link, pulled by real skopeo. Upstream requests are
//! counted in the registry's access log.

use std::path::Path;
use std::time::{Duration, Instant};

use dockerproxy_tests::corrupt::{CorruptFront, Mangle};
use dockerproxy_tests::garage::{Garage, require_garage};
use dockerproxy_tests::proxy_process::{ProxyProcess, binary};
use dockerproxy_tests::{Mode, SeedOptions, TestBed, docker_hub_route_toml, require_tools, skopeo};

const MIB: usize = 1024 * 1024;
/// Lease TTL of the replicas (the kill test uses a shorter one).
const LEASE_TTL: Duration = Duration::from_secs(5);

async fn replica(
    bed: &TestBed,
    name: &str,
    upstream: &str,
    garage: &Garage,
    ttl: Duration,
) -> ProxyProcess {
    replica_with_realms(bed, name, upstream, garage, ttl, &[]).await
}

fn realm_origins(bed: &TestBed) -> Vec<String> {
    bed.token_server
        .as_ref()
        .map(|t| format!("http://{}", t.addr()))
        .into_iter()
        .collect()
}

async fn replica_with_realms(
    bed: &TestBed,
    name: &str,
    upstream: &str,
    garage: &Garage,
    ttl: Duration,
    realms: &[String],
) -> ProxyProcess {
    let work = bed.tmp.path().join(format!("replica-{name}"));
    let cache = work.join("cache");
    std::fs::create_dir_all(&work).unwrap();
    let cache_s = cache.display().to_string();
    let env = [
        ("CACHE_DIR", cache_s.as_str()),
        ("HOSTNAME", name),
        ("RUST_LOG", "info,dockerproxy_server::shared=debug"),
    ];
    let toml = format!(
        "{}\n{}",
        docker_hub_route_toml(upstream, realms, ""),
        garage.proxy_toml(ttl)
    );
    ProxyProcess::start(&work, &env, &toml)
        .await
        .expect("start a replica")
}

/// The dockerproxy binary built, a seeded upstream (16 MiB big layer) behind a link that sends
/// `chunk` bytes every 30 ms, and a Garage store.
async fn slow_bed(chunk: usize) -> (TestBed, CorruptFront, Garage) {
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(
        Mode::Plain,
        SeedOptions {
            big_layer_size: 16 * MIB,
        },
    )
    .await;
    let front = CorruptFront::start(
        bed.registry.base_url(),
        Mangle::Trickle {
            chunk,
            interval: Duration::from_millis(30),
        },
    )
    .unwrap();
    let garage = Garage::start(&bed.tmp.path().join("garage")).unwrap();
    (bed, front, garage)
}

fn blob_gets(bed: &TestBed, image: &dockerproxy_tests::Image) -> Vec<(String, usize)> {
    image
        .blobs()
        .map(|b| {
            let path = format!("/v2/{}/blobs/{}", image.repo, b.digest);
            (b.digest.clone(), bed.registry.count("GET", &path))
        })
        .collect()
}

async fn pull_all(
    replicas: &[&ProxyProcess],
    per_replica: usize,
    out: &Path,
    image: &dockerproxy_tests::Image,
) -> Duration {
    std::fs::create_dir_all(out).unwrap();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for (r, proxy) in replicas.iter().enumerate() {
        for i in 0..per_replica {
            let src = format!("{}/{}:{}", proxy.host_port(), image.repo, image.tag);
            let dir = out.join(format!("r{r}-{i}"));
            tasks.push(tokio::spawn(async move {
                let o = skopeo::pull(&src, &dir, &[]).await;
                (o, dir)
            }));
        }
    }
    for t in tasks {
        let (o, dir) = t.await.unwrap();
        skopeo::assert_pulled(&o, &dir, image, "");
    }
    t0.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_thirty_cold_pulls_one_upstream_get_per_blob_and_hits_survive_restarts() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_garage() {
        return;
    }
    // A slow link: the 16 MiB layer takes about 2 s upstream.
    let (bed, front, garage) = slow_bed(256 << 10).await;
    let up = front.base_url();
    let a = replica(&bed, "a", &up, &garage, LEASE_TTL).await;
    let b = replica(&bed, "b", &up, &garage, LEASE_TTL).await;
    let c = replica(&bed, "c", &up, &garage, LEASE_TTL).await;
    let image = bed.seeded.big.clone();
    let out = bed.tmp.path().join("pulls");

    let cold = pull_all(&[&a, &b, &c], 10, &out, &image).await;
    let gets = blob_gets(&bed, &image);
    let logs = format!("{}\n{}\n{}", a.log(), b.log(), c.log());
    for (digest, n) in &gets {
        assert_eq!(
            *n, 1,
            "blob {digest}: {n} upstream GETs across 3 replicas\n{logs}"
        );
    }
    let manifest_gets = bed.registry.count(
        "GET",
        &format!("/v2/{}/manifests/{}", image.repo, image.tag),
    );
    eprintln!(
        "FIGURES: 30 concurrent cold skopeo pulls over 3 replicas sharing Garage: upstream GETs per \
         blob {:?}; manifest GETs by tag {manifest_gets}; wall {:.2} s; garage ready in {:?}",
        gets.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        cold.as_secs_f64(),
        garage.ready_after
    );

    // Every replica restarted on an EMPTY local cache directory: hits come from the store.
    for p in [a, b, c] {
        p.kill9();
    }
    for name in ["a", "b", "c"] {
        let _ = std::fs::remove_dir_all(bed.tmp.path().join(format!("replica-{name}")));
    }
    let a = replica(&bed, "a", &up, &garage, LEASE_TTL).await;
    let b = replica(&bed, "b", &up, &garage, LEASE_TTL).await;
    let c = replica(&bed, "c", &up, &garage, LEASE_TTL).await;
    let out2 = bed.tmp.path().join("pulls-after-restart");
    let warm = pull_all(&[&a, &b, &c], 2, &out2, &image).await;
    let after = blob_gets(&bed, &image);
    assert_eq!(
        after, gets,
        "no blob is fetched upstream again after every replica restarted"
    );
    eprintln!(
        "FIGURES: after restarting all 3 replicas on empty local dirs, 6 pulls: 0 new upstream blob \
         GETs; wall {:.2} s",
        warm.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_fill_does_not_block_the_others() {
    if !require_tools(&["docker-registry"]) || !require_garage() {
        return;
    }
    // About 3.8 s for the big layer.
    let (bed, front, garage) = slow_bed(128 << 10).await;
    let up = front.base_url();
    let ttl = Duration::from_secs(2);
    let a = replica(&bed, "a", &up, &garage, ttl).await;
    let b = replica(&bed, "b", &up, &garage, ttl).await;
    let big = bed.seeded.big.layers[0].clone();
    let path = format!("/v2/library/big/blobs/{}", big.digest);
    let http = reqwest::Client::new();

    // A starts the fill and holds the lease.
    let url_a = format!("{}{path}", a.base_url());
    let ca = http.clone();
    let on_a = tokio::spawn(async move {
        let r = ca.get(url_a).send().await?;
        r.bytes().await
    });
    bed.registry
        .wait_for_count("GET", &path, 1, Duration::from_secs(10))
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // B's client arrives while A fills: it waits on the lease.
    let url_b = format!("{}{path}", b.base_url());
    let t_b = Instant::now();
    let cb = http.clone();
    let on_b = tokio::spawn(async move {
        let r = cb.get(url_b).send().await?;
        let status = r.status();
        r.bytes().await.map(|b| (status, b))
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    a.kill9();
    let a_result = on_a.await.unwrap();
    assert!(a_result.is_err(), "A's client sees its transfer cut");

    let (status, body) = tokio::time::timeout(Duration::from_secs(60), on_b)
        .await
        .expect("B finished")
        .unwrap()
        .expect("B's transfer");
    let waited = t_b.elapsed();
    assert_eq!(status, 200, "{}", b.log());
    assert_eq!(
        dockerproxy_core::verifier::sha256_digest(&body).to_string(),
        big.digest
    );
    let upstream = bed.registry.count("GET", &path);
    assert_eq!(upstream, 2, "A's cut fetch and B's takeover");
    // The log is written asynchronously.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        b.log().contains("lease expired"),
        "B took over an expired lease:\n{}",
        b.log()
    );
    eprintln!(
        "FIGURES: replica killed mid-fill: the other replica's client got the verified blob after \
         {:.2} s (lease TTL {:?}); upstream GETs {upstream}",
        waited.as_secs_f64(),
        ttl
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_never_grants_access_a_private_blob_is_refused_on_another_replica() {
    if !require_tools(&["docker-registry", "skopeo"]) || !require_garage() {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Token, SeedOptions::default()).await;
    let garage = Garage::start(&bed.tmp.path().join("garage")).unwrap();
    let realms = realm_origins(&bed);
    let up = bed.registry.base_url().to_owned();
    let a = replica_with_realms(&bed, "a", &up, &garage, LEASE_TTL, &realms).await;
    let b = replica_with_realms(&bed, "b", &up, &garage, LEASE_TTL, &realms).await;
    let image = bed.seeded.private_secret.clone();

    // alice pulls the private image through A: its blobs land in the shared store.
    let dir = bed.tmp.path().join("alice");
    let src = format!("{}/private/secret:1.0", a.host_port());
    let out = skopeo::pull(&src, &dir, &["--src-creds", "alice:secret"]).await;
    skopeo::assert_pulled(&out, &dir, &image, &a.log());
    let tls = dockerproxy_server::tls::client_config(None).unwrap();
    let settings = garage.settings("", Duration::from_secs(5));
    let store = dockerproxy_server::shared::remote::Remote::new(&settings, tls).unwrap();
    let mut in_store = false;
    for _ in 0..50 {
        let mut all = true;
        for blob in image.blobs() {
            let d = dockerproxy_core::reference::Digest::parse(&blob.digest).unwrap();
            store.forget("docker.io", &d);
            all &= store.blob_size("docker.io", &d).await.is_some();
        }
        if all {
            in_store = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(in_store, "alice's blobs were uploaded to the store");

    // Anonymous clients on B (which has never seen the repository) get none of it, by digest,
    // through the private repository or through a public one.
    let http = reqwest::Client::new();
    for blob in image.blobs() {
        for repo in ["private/secret", "library/busybox"] {
            let url = format!("{}/v2/{repo}/blobs/{}", b.base_url(), blob.digest);
            let r = http.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.bytes().await.unwrap_or_default();
            assert!(
                matches!(status, 401 | 403 | 404),
                "{repo} {}: {status}\n{}",
                blob.digest,
                b.log()
            );
            let needle = &blob.data[..blob.data.len().min(32)];
            assert!(
                !body.windows(needle.len()).any(|w| w == needle),
                "bytes leaked"
            );
        }
    }
    // alice on B is served, from the store: no new upstream blob GET.
    let before: usize = image
        .blobs()
        .map(|bl| {
            bed.registry
                .count("GET", &format!("/v2/private/secret/blobs/{}", bl.digest))
        })
        .sum();
    let dir = bed.tmp.path().join("alice-b");
    let src = format!("{}/private/secret:1.0", b.host_port());
    let out = skopeo::pull(&src, &dir, &["--src-creds", "alice:secret"]).await;
    skopeo::assert_pulled(&out, &dir, &image, &b.log());
    let after: usize = image
        .blobs()
        .map(|bl| {
            bed.registry
                .count("GET", &format!("/v2/private/secret/blobs/{}", bl.digest))
        })
        .sum();
    assert_eq!(after, before, "alice's pull on B came from the store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_object_in_the_store_is_never_served_and_is_replaced() {
    if !require_tools(&["docker-registry"]) || !require_garage() {
        return;
    }
    binary().expect("the dockerproxy binary");
    let bed = TestBed::start_with(Mode::Plain, SeedOptions::default()).await;
    let garage = Garage::start(&bed.tmp.path().join("garage")).unwrap();
    let up = bed.registry.base_url().to_owned();
    let image = bed.seeded.busybox.clone();
    let blob = image.layers[0].clone();
    let d = dockerproxy_core::reference::Digest::parse(&blob.digest).unwrap();
    // Wrong bytes of the right length stored under the blob's key (a damaged store).
    let mut wrong = blob.data.to_vec();
    wrong[blob.data.len() / 2] ^= 0xff;
    let file = bed.tmp.path().join("wrong");
    std::fs::write(&file, &wrong).unwrap();
    let settings = garage.settings("", Duration::from_secs(5));
    let tls = dockerproxy_server::tls::client_config(None).unwrap();
    let store = dockerproxy_server::shared::remote::Remote::new(&settings, tls).unwrap();
    store
        .upload_blob(
            "docker.io",
            &d,
            std::fs::File::open(&file).unwrap(),
            wrong.len() as u64,
        )
        .await
        .unwrap();

    let a = replica(&bed, "a", &up, &garage, LEASE_TTL).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v2/{}/blobs/{}", a.base_url(), image.repo, blob.digest);
    // Whole and ranged reads of the corrupt object: never a clean end.
    let whole = async {
        let r = http.get(&url).send().await?;
        r.bytes().await
    }
    .await;
    assert!(
        whole.is_err(),
        "a corrupt store object ended cleanly: {whole:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Deleted from the store; the next request fills again from upstream and is right.
    let again = http.get(&url).send().await.unwrap();
    assert_eq!(again.status(), 200);
    let body = again.bytes().await.unwrap();
    assert_eq!(
        dockerproxy_core::verifier::sha256_digest(&body).to_string(),
        blob.digest
    );
    assert_eq!(
        bed.registry
            .count("GET", &format!("/v2/{}/blobs/{}", image.repo, blob.digest)),
        1,
        "{}",
        a.log()
    );
    // And the store now holds the right bytes: a fresh replica's ranged read verifies.
    let b = replica(&bed, "b", &up, &garage, LEASE_TTL).await;
    let mut ok = false;
    for _ in 0..30 {
        let r = http
            .get(format!(
                "{}/v2/{}/blobs/{}",
                b.base_url(),
                image.repo,
                blob.digest
            ))
            .header("range", "bytes=2-9")
            .send()
            .await
            .unwrap();
        if r.status() == 206 {
            assert_eq!(r.bytes().await.unwrap(), blob.data[2..10]);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "{}", b.log());
}

//! The shared store's primitives against a real Garage on 127.0.0.1: the intent-and-list lease
//! (exclusive, renewed, taken over after expiry, released), blob upload and read-back.

use std::time::Duration;

use dockerproxy_core::reference::Digest;
use dockerproxy_server::shared::lease::{self, Attempt};
use dockerproxy_server::shared::remote::Remote;
use dockerproxy_tests::garage::{Garage, require_garage};
use futures_util::StreamExt;

fn remote(g: &Garage) -> std::sync::Arc<Remote> {
    let tls = dockerproxy_server::tls::client_config(None).unwrap();
    std::sync::Arc::new(Remote::new(&g.settings("t/", Duration::from_secs(2)), tls).unwrap())
}

fn digest_of(bytes: &[u8]) -> Digest {
    dockerproxy_core::verifier::sha256_digest(bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_lease_is_exclusive_and_expires() {
    if !require_garage() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = Garage::start(dir.path()).unwrap();
    eprintln!("FIGURES: garage ready after {:?}", g.ready_after);
    let (a, b) = (remote(&g), remote(&g));
    let d = digest_of(b"lease");
    let ttl = Duration::from_secs(2);

    // Three replicas contend for one lease until each has held it once: never two at once.
    let holders = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let race = digest_of(b"race");
    let mut tasks = Vec::new();
    for name in ["a", "b", "c"] {
        let r = remote(&g);
        let (holders, most, race) = (holders.clone(), most.clone(), race.clone());
        tasks.push(tokio::spawn(async move {
            let mut tries = 0u32;
            loop {
                tries += 1;
                if let Attempt::Won(l) =
                    lease::try_acquire(&r, "r", &race, ttl, name).await.unwrap()
                {
                    let now = holders.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    holders.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    drop(l);
                    return tries;
                }
                tokio::time::sleep(
                    Duration::from_millis(100) + lease::jitter(Duration::from_millis(200)),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        let tries = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
        eprintln!("a contender won after {tries} attempts");
    }
    assert_eq!(
        most.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never two holders at once"
    );

    // A live (renewed) lease stays held past its TTL.
    let Attempt::Won(held) = lease::try_acquire(&a, "r", &d, ttl, "a").await.unwrap() else {
        panic!("first attempt must win");
    };
    tokio::time::sleep(ttl + Duration::from_secs(1)).await;
    assert!(matches!(
        lease::try_acquire(&b, "r", &d, ttl, "b").await.unwrap(),
        Attempt::Held
    ));
    // A replica that stops renewing (dies) loses it after the TTL: the renewal task is stopped
    // without deleting the object, as a kill -9 would.
    held.abandon();
    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
    let taken = lease::try_acquire(&b, "r", &d, ttl, "b").await.unwrap();
    assert!(matches!(taken, Attempt::Won(_)), "takeover after expiry");
    assert!(matches!(
        lease::try_acquire(&a, "r", &d, ttl, "a").await.unwrap(),
        Attempt::Held
    ));
    drop(taken);
    // Released: free again (the delete runs in the background).
    let mut free = false;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Attempt::Won(_) = lease::try_acquire(&a, "r", &d, ttl, "a").await.unwrap() {
            free = true;
            break;
        }
    }
    assert!(free, "a released lease can be taken at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garage_blob_round_trip() {
    if !require_garage() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let g = Garage::start(dir.path()).unwrap();
    let r = remote(&g);
    // Above one multipart part (8 MiB).
    let body: Vec<u8> = (0..9 * 1024 * 1024u32)
        .map(|i| (i * 7 + i / 4093) as u8)
        .collect();
    let d = digest_of(&body);
    let path = dir.path().join("blob");
    std::fs::write(&path, &body).unwrap();
    assert_eq!(r.blob_size("docker.io", &d).await, None);
    r.upload_blob(
        "docker.io",
        &d,
        std::fs::File::open(&path).unwrap(),
        body.len() as u64,
    )
    .await
    .unwrap();
    let fresh = remote(&g);
    assert_eq!(
        fresh.blob_size("docker.io", &d).await,
        Some(body.len() as u64)
    );
    let mut s = fresh.blob_stream("docker.io", &d).await.unwrap();
    let mut got = Vec::new();
    while let Some(c) = s.next().await {
        got.extend_from_slice(&c.unwrap());
    }
    assert_eq!(got.len(), body.len());
    assert!(got == body, "the stored bytes read back unchanged");
    // Another registry does not share the entry (COMPAT case 46).
    assert_eq!(fresh.blob_size("ghcr.io", &d).await, None);
    // A replica starting later learns the store's blobs from the listing.
    let later = remote(&g);
    assert_eq!(later.scan().await.unwrap(), 1);
    assert_eq!(later.known_count(), 1);
}

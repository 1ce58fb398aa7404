//! Micro-benchmarks of the core: routing + classification of a request, and a whole `Exchange`
//! for a cached-manifest hit. Run with `cargo bench -p dockerproxy-benches`; compare runs of
//! the same machine, never absolute numbers across machines.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dockerproxy_core::exchange::{Access, Action, CacheResult, RequestHead};
use dockerproxy_core::reference::Digest;
use dockerproxy_core::{Config, Exchange, Timestamp};
use http::{HeaderMap, HeaderValue, Method};

fn main() {
    divan::main();
}

fn config() -> Arc<Config> {
    let mut env = BTreeMap::new();
    env.insert("CUSTOM_DOMAIN".to_owned(), "example.com".to_owned());
    Arc::new(
        dockerproxy_core::config::load(&env, None)
            .expect("default config")
            .0,
    )
}

const PATH: &str = "/v2/library/busybox/manifests/sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[divan::bench]
fn route_and_classify(bencher: divan::Bencher<'_, '_>) {
    let config = config();
    bencher.bench(|| {
        let r = dockerproxy_core::route::route(
            &config,
            divan::black_box(Some("docker.example.com:8443")),
            PATH,
            Some("ns=docker.io"),
        );
        let c = dockerproxy_core::request::classify(divan::black_box(PATH));
        (r, c.is_ok())
    });
}

#[divan::bench]
fn cached_manifest_hit_exchange(bencher: divan::Bencher<'_, '_>) {
    let config = config();
    let body = Bytes::from_static(
        br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#,
    );
    let digest = Digest::parse(&PATH[PATH.len() - 71..]).expect("digest");
    let mut headers = HeaderMap::new();
    headers.insert(
        http::header::HOST,
        HeaderValue::from_static("docker.example.com"),
    );
    headers.append(
        http::header::ACCEPT,
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    headers.append(
        http::header::ACCEPT,
        HeaderValue::from_static("application/vnd.oci.image.index.v1+json"),
    );
    let head = RequestHead {
        method: Method::GET,
        target: PATH.to_owned(),
        headers,
        peer: None,
        tls: false,
    };
    let now = Timestamp::from_millis(1_790_000_000_000);
    bencher.bench(|| {
        let mut ex = Exchange::new(config.clone(), head.clone(), now);
        let mut status = 0;
        loop {
            match ex.poll_action(now) {
                Action::CacheLookup(_) => ex.handle_cache_result(
                    CacheResult::Manifest {
                        digest: digest.clone(),
                        media_type: "application/vnd.oci.image.manifest.v1+json".to_owned(),
                        body: body.clone(),
                        access: Access {
                            public: true,
                            granted: false,
                            linked: true,
                            public_within_max_stale: true,
                        },
                        validated_at: None,
                    },
                    now,
                ),
                Action::Respond(r) => status = r.status.as_u16(),
                Action::Done => break,
                other => panic!("unexpected action {other:?}"),
            }
        }
        status
    });
}

//! Cache decisions of the `Exchange` (COMPAT.md §8, cases 44–58, 72, 73): when a hit is served
//! without the upstream, when it needs an authorisation HEAD, tag revalidation with one HEAD,
//! stale serving on transient failures, and what is stored and recorded.

mod support;

use bytes::Bytes;
use dockerproxy_core::Timestamp;
use dockerproxy_core::cache_policy::CacheKey;
use dockerproxy_core::exchange::{Access, BodyPlan, CacheQuery, CacheResult, UpstreamError};
use dockerproxy_core::reference::Digest;
use dockerproxy_core::token::{Identity, TokenCache};
use http::Method;
use support::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";
const BODY: &str =
    r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#;

fn cfg() -> dockerproxy_core::Config {
    let mut c = config();
    set_origin(&mut c, "docker.io", "https://hub.test");
    c
}

fn digest() -> Digest {
    Digest::parse(&sha256(BODY.as_bytes())).unwrap()
}

const PUBLIC: Access = Access {
    public: true,
    granted: false,
    linked: true,
    public_within_max_stale: true,
};
const UNPROVEN: Access = Access {
    public: false,
    granted: false,
    linked: true,
    public_within_max_stale: false,
};
/// Public a while ago (within max_stale) but not within the manifest TTL.
const ONCE_PUBLIC: Access = Access {
    public: false,
    granted: false,
    linked: true,
    public_within_max_stale: true,
};

fn manifest_hit(
    access: Access,
    validated_at: Option<Timestamp>,
) -> impl FnMut(&CacheQuery) -> CacheResult {
    move |_| CacheResult::Manifest {
        digest: digest(),
        media_type: OCI.to_owned(),
        body: Bytes::from_static(BODY.as_bytes()),
        access,
        validated_at,
    }
}

fn tag_req(headers: &[(&str, &str)]) -> dockerproxy_core::exchange::RequestHead {
    request(
        Method::GET,
        "docker.example.com",
        "/v2/library/busybox/manifests/latest",
        headers,
    )
}

fn run(
    req: dockerproxy_core::exchange::RequestHead,
    cache: impl FnMut(&CacheQuery) -> CacheResult,
    upstream: impl FnMut(&dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError>,
) -> Transcript {
    let mut tokens = TokenCache::new(8);
    drive_full(&cfg(), req, None, cache, &mut tokens, upstream)
}

#[test]
fn compat_44_fresh_public_tag_is_a_hit_without_upstream() {
    let t = run(
        tag_req(&[("accept", OCI)]),
        manifest_hit(PUBLIC, Some(NOW)),
        no_upstream,
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
    assert_eq!(t.body_str(), BODY);
    assert_eq!(
        t.header("docker-content-digest").unwrap(),
        digest().to_string()
    );
    assert_eq!(t.header("content-type").unwrap(), OCI);
}

#[test]
fn lookup_carries_key_repository_and_identity() {
    let mut seen = Vec::new();
    let _ = run(
        tag_req(&[
            ("accept", OCI),
            ("accept", "application/vnd.oci.image.index.v1+json"),
            ("authorization", "Bearer x"),
        ]),
        |q| {
            seen.push(q.clone());
            CacheResult::Miss
        },
        |_| Ok(Reply::new(404).json("{}")),
    );
    let q = &seen[0];
    assert_eq!(q.repository.as_str(), "library/busybox");
    assert!(matches!(q.identity, Identity::Client(_)));
    match &q.key {
        CacheKey::Tag {
            registry, accept, ..
        } => {
            assert_eq!(registry, "docker.io");
            assert_eq!(
                accept,
                "application/vnd.oci.image.index.v1+json,application/vnd.oci.image.manifest.v1+json"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn compat_48_unproven_hit_asks_upstream_as_the_client_and_sends_no_cached_byte_on_401() {
    let t = run(tag_req(&[]), manifest_hit(UNPROVEN, Some(NOW)), |req| {
        assert_eq!(req.method, Method::HEAD);
        Ok(Reply::new(401).header(
            "www-authenticate",
            r#"Bearer realm="https://auth.test/token",service="s""#,
        ))
    });
    assert_eq!(t.status(), 401);
    assert!(!t.body_str().contains("schemaVersion"));
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains("docker.example.com/v2/auth")
    );
    let t = run(tag_req(&[]), manifest_hit(UNPROVEN, Some(NOW)), |_| {
        Ok(Reply::new(403))
    });
    assert_eq!(t.status(), 403);
    assert!(!t.body_str().contains("schemaVersion"));
}

#[test]
fn unproven_hit_served_after_a_successful_head_and_recorded() {
    let t = run(
        tag_req(&[("authorization", "Bearer good")]),
        manifest_hit(UNPROVEN, Some(NOW)),
        |req| {
            assert_eq!(req.method, Method::HEAD);
            assert_eq!(sent_header(req, "authorization"), vec!["Bearer good"]);
            Ok(Reply::new(200).header("docker-content-digest", digest().to_string()))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
    assert_eq!(t.body_str(), BODY);
    assert_eq!(t.access.len(), 1);
    assert!(!t.access[0].anonymous);
}

#[test]
fn compat_72_tag_past_ttl_same_digest_is_one_head_then_hit() {
    let old = NOW - std::time::Duration::from_secs(3600);
    let t = run(
        tag_req(&[("accept", OCI)]),
        manifest_hit(PUBLIC, Some(old)),
        |req| {
            assert_eq!(req.method, Method::HEAD);
            assert_eq!(sent_header(req, "accept"), vec![OCI]);
            assert_eq!(
                sent_header(req, "if-none-match"),
                vec![format!("\"{}\"", digest())]
            );
            Ok(Reply::new(200).header("docker-content-digest", digest().to_string()))
        },
    );
    assert_eq!(t.sent.len(), 1);
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
    assert_eq!(t.validated.len(), 1);
    // A 304 is as good as the same digest.
    let t = run(tag_req(&[]), manifest_hit(PUBLIC, Some(old)), |_| {
        Ok(Reply::new(304))
    });
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
}

#[test]
fn compat_72_tag_past_ttl_changed_digest_is_head_then_get() {
    let old = NOW - std::time::Duration::from_secs(3600);
    let new_body =
        r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","x":1}"#;
    let t = run(
        tag_req(&[("accept", OCI)]),
        manifest_hit(PUBLIC, Some(old)),
        |req| {
            if req.method == Method::HEAD {
                return Ok(
                    Reply::new(200).header("docker-content-digest", sha256(new_body.as_bytes()))
                );
            }
            Ok(Reply::new(200).header("content-type", OCI).body(new_body))
        },
    );
    assert_eq!(
        t.sent.iter().map(|r| r.method.clone()).collect::<Vec<_>>(),
        vec![Method::HEAD, Method::GET]
    );
    assert_eq!(t.header("x-cache").unwrap(), "MISS");
    assert_eq!(t.body_str(), new_body);
    assert_eq!(t.stored.len(), 1);
}

#[test]
fn compat_73_stale_served_on_5xx_for_public_only() {
    let old = NOW - std::time::Duration::from_secs(3600);
    let t = run(tag_req(&[]), manifest_hit(PUBLIC, Some(old)), |_| {
        Ok(Reply::new(503))
    });
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
    assert!(t.header("warning").unwrap().contains("stale"));
    let t = run(tag_req(&[]), manifest_hit(PUBLIC, Some(old)), |_| {
        Err(UpstreamError::Timeout)
    });
    assert!(t.header("warning").unwrap().contains("stale"));
    let t = run(tag_req(&[]), manifest_hit(UNPROVEN, Some(old)), |_| {
        Ok(Reply::new(503))
    });
    assert_eq!(t.status(), 502);
    assert!(!t.body_str().contains("schemaVersion"));
    // Beyond max_stale (24 h) nothing stale is served.
    let ancient = NOW - std::time::Duration::from_secs(3 * 86_400);
    let t = run(tag_req(&[]), manifest_hit(PUBLIC, Some(ancient)), |_| {
        Ok(Reply::new(503))
    });
    assert_eq!(t.status(), 502);
}

#[test]
fn revalidation_404_drops_the_tag() {
    let old = NOW - std::time::Duration::from_secs(3600);
    let t = run(tag_req(&[]), manifest_hit(PUBLIC, Some(old)), |_| {
        Ok(Reply::new(404))
    });
    assert_eq!(t.status(), 404);
    assert_eq!(t.dropped.len(), 1);
    assert_eq!(t.error_code(), "MANIFEST_UNKNOWN");
}

#[test]
fn compat_56_digest_manifest_stays_a_hit_whatever_its_age() {
    let path = format!("/v2/library/busybox/manifests/{}", digest());
    let t = run(
        get("docker.example.com", &path),
        manifest_hit(PUBLIC, None),
        no_upstream,
    );
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
}

fn blob_path() -> String {
    format!(
        "/v2/library/busybox/blobs/{}",
        sha256(b"0123456789abcdefghij")
    )
}

#[test]
fn compat_50_53_blob_hit_full_and_ranged() {
    let hit = |_: &CacheQuery| CacheResult::Blob {
        size: 20,
        access: PUBLIC,
    };
    let t = run(get("docker.example.com", &blob_path()), hit, no_upstream);
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("content-length").unwrap(), "20");
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
    assert_eq!(
        t.header("docker-content-digest").unwrap(),
        sha256(b"0123456789abcdefghij")
    );
    assert!(matches!(
        t.response.as_ref().unwrap().body,
        BodyPlan::Cache { range: None, .. }
    ));
    let t = run(
        request(
            Method::GET,
            "docker.example.com",
            &blob_path(),
            &[("range", "bytes=10-19")],
        ),
        hit,
        no_upstream,
    );
    assert_eq!(t.status(), 206);
    assert_eq!(t.header("content-range").unwrap(), "bytes 10-19/20");
    assert_eq!(t.header("content-length").unwrap(), "10");
    let t = run(
        request(
            Method::GET,
            "docker.example.com",
            &blob_path(),
            &[("range", "bytes=20-")],
        ),
        hit,
        no_upstream,
    );
    assert_eq!(t.status(), 416);
    assert_eq!(t.header("content-range").unwrap(), "bytes */20");
}

#[test]
fn unlinked_blob_needs_a_head_through_the_requested_repository() {
    let hit = |_: &CacheQuery| CacheResult::Blob {
        size: 20,
        access: Access {
            public: true,
            granted: true,
            linked: false,
            public_within_max_stale: true,
        },
    };
    let t = run(get("docker.example.com", &blob_path()), hit, |req| {
        assert_eq!(req.method, Method::HEAD);
        assert!(req.url.path().starts_with("/v2/library/busybox/blobs/"));
        Ok(Reply::new(307).header("location", "https://cdn.test/x"))
    });
    assert_eq!(t.status(), 200, "a 3xx from the registry proves access");
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
}

#[test]
fn miss_stores_blob_under_its_repository_and_records_public_access() {
    let data = b"0123456789abcdefghij";
    let t = run(
        get("docker.example.com", &blob_path()),
        |_| CacheResult::Miss,
        |_| Ok(Reply::new(200).body(&data[..])),
    );
    assert_eq!(t.header("x-cache").unwrap(), "MISS");
    match &t.response.as_ref().unwrap().body {
        BodyPlan::Upstream {
            store: Some(target),
            verify: Some(_),
        } => assert_eq!(target.repository.as_str(), "library/busybox"),
        other => panic!("{other:?}"),
    }
    assert_eq!(t.access.len(), 1);
    assert!(
        t.access[0].anonymous,
        "no credential was sent: the repository is public"
    );
}

#[test]
fn compat_45_head_on_uncached_tag_is_forwarded_as_head_and_not_stored() {
    let t = run(
        request(
            Method::HEAD,
            "docker.example.com",
            "/v2/library/busybox/manifests/latest",
            &[],
        ),
        |_| CacheResult::Miss,
        |req| {
            assert_eq!(req.method, Method::HEAD);
            Ok(Reply::new(200)
                .header("content-length", "77")
                .header("docker-content-digest", digest().to_string()))
        },
    );
    assert_eq!(t.status(), 200);
    assert!(t.stored.is_empty());
    assert_eq!(t.header("content-length").unwrap(), "77");
}

#[test]
fn compat_46_same_repo_and_tag_on_two_registries_never_share_a_key() {
    let mut c = cfg();
    set_origin(&mut c, "ghcr.io", "https://ghcr.test");
    let mut keys = Vec::new();
    for host in ["docker.example.com", "ghcr.example.com"] {
        let mut tokens = TokenCache::new(8);
        let t = drive_full(
            &c,
            get(host, "/v2/foo/bar/manifests/1"),
            None,
            |q| {
                keys.push(q.key.clone());
                CacheResult::Miss
            },
            &mut tokens,
            |_| Ok(Reply::new(200).header("content-type", OCI).body(BODY)),
        );
        assert_eq!(t.sent.len(), 1, "each registry is fetched on its own");
        assert_eq!(t.header("x-cache").unwrap(), "MISS");
    }
    assert_ne!(keys[0], keys[1]);
    // The route host and the client mode are not part of the key: docker-staging shares it.
    let mut staging = Vec::new();
    let mut tokens = TokenCache::new(8);
    let _ = drive_full(
        &c,
        get("docker-staging.example.com", "/v2/foo/bar/manifests/1"),
        None,
        |q| {
            staging.push(q.key.clone());
            CacheResult::Miss
        },
        &mut tokens,
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(staging[0], keys[0]);
}

#[test]
fn compat_73_stale_needs_public_within_max_stale_not_within_ttl() {
    let old = NOW - std::time::Duration::from_secs(3600);
    let t = run(tag_req(&[]), manifest_hit(ONCE_PUBLIC, Some(old)), |_| {
        Ok(Reply::new(503))
    });
    assert_eq!(t.status(), 200);
    assert!(t.header("warning").unwrap().contains("stale"));
    // But being public a while ago is no proof for serving a fresh hit without asking.
    let t = run(tag_req(&[]), manifest_hit(ONCE_PUBLIC, Some(NOW)), |req| {
        assert_eq!(req.method, Method::HEAD);
        Ok(Reply::new(401))
    });
    assert_eq!(t.status(), 401);
}

#[test]
fn digest_manifest_hit_of_an_unaccepted_media_type_goes_upstream() {
    let path = format!("/v2/library/busybox/manifests/{}", digest());
    let docker_v2 = "application/vnd.docker.distribution.manifest.v2+json";
    let t = run(
        request(
            Method::GET,
            "docker.example.com",
            &path,
            &[("accept", docker_v2)],
        ),
        manifest_hit(PUBLIC, None),
        |req| {
            assert_eq!(req.method, Method::GET);
            Ok(Reply::new(404)
                .json(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"m","detail":null}]}"#))
        },
    );
    assert_eq!(
        t.status(),
        404,
        "the cached OCI manifest is not served to a Docker-v2-only client"
    );
    let t = run(
        request(Method::GET, "docker.example.com", &path, &[("accept", OCI)]),
        manifest_hit(PUBLIC, None),
        no_upstream,
    );
    assert_eq!(t.header("x-cache").unwrap(), "HIT");
}

// ----------------------------------------------------------------------------------------------
// A Range GET of an uncached blob is served from the fill it leads (COMPAT.md §8.4, issue 8)
// ----------------------------------------------------------------------------------------------

const BLOB: &[u8] = b"0123456789abcdefghij";

fn ranged(range: &str) -> dockerproxy_core::exchange::RequestHead {
    request(
        Method::GET,
        "docker.example.com",
        &blob_path(),
        &[("range", range)],
    )
}

fn whole_blob(req: &dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError> {
    assert_eq!(req.method, Method::GET);
    assert!(sent_header(req, "range").is_empty(), "Range sent upstream");
    assert!(sent_header(req, "if-range").is_empty());
    Ok(Reply::new(200)
        .header("content-length", BLOB.len().to_string())
        .body(BLOB))
}

fn fill_target(t: &Transcript) -> (Option<Digest>, dockerproxy_core::exchange::StoreTarget) {
    match &t.response.as_ref().unwrap().body {
        BodyPlan::Upstream {
            verify,
            store: Some(target),
        } => (verify.clone(), target.clone()),
        other => panic!("not a fill: {other:?}"),
    }
}

#[test]
fn range_on_a_lead_miss_asks_for_the_whole_blob_and_answers_206_from_the_fill() {
    let t = run(ranged("bytes=5-9"), |_| CacheResult::Lead, whole_blob);
    assert_eq!(t.sent.len(), 1, "exactly one upstream request");
    assert_eq!(t.status(), 206);
    assert_eq!(t.header("content-range").unwrap(), "bytes 5-9/20");
    assert_eq!(t.header("content-length").unwrap(), "5");
    assert_eq!(t.header("x-cache").unwrap(), "MISS");
    assert_eq!(t.header("docker-content-digest").unwrap(), sha256(BLOB));
    let (verify, target) = fill_target(&t);
    assert_eq!(verify.unwrap().to_string(), sha256(BLOB));
    assert_eq!(target.range, Some((5, 9)));
    assert_eq!(target.repository.as_str(), "library/busybox");
    // Open-ended and suffix ranges are clamped to the announced length.
    let t = run(ranged("bytes=15-"), |_| CacheResult::Lead, whole_blob);
    assert_eq!(t.header("content-range").unwrap(), "bytes 15-19/20");
    assert_eq!(fill_target(&t).1.range, Some((15, 19)));
    let t = run(ranged("bytes=-4"), |_| CacheResult::Lead, whole_blob);
    assert_eq!(t.header("content-range").unwrap(), "bytes 16-19/20");
    assert_eq!(fill_target(&t).1.range, Some((16, 19)));
}

#[test]
fn range_on_a_lead_miss_unsatisfiable_multi_or_unsized() {
    let t = run(ranged("bytes=20-"), |_| CacheResult::Lead, whole_blob);
    assert_eq!(t.status(), 416);
    assert_eq!(t.header("content-range").unwrap(), "bytes */20");
    assert_eq!(t.header("content-length").unwrap(), "0");
    assert_eq!(t.response.as_ref().unwrap().body, BodyPlan::Empty);
    // Multiple ranges: the whole verified blob, stored (SECURITY.md §2.4).
    let t = run(ranged("bytes=0-1,5-6"), |_| CacheResult::Lead, whole_blob);
    assert_eq!(t.status(), 200);
    assert!(t.header("content-range").is_none());
    assert_eq!(t.header("content-length").unwrap(), "20");
    assert_eq!(fill_target(&t).1.range, None);
    // No announced length: the range cannot be framed before the end, so the whole body.
    let t = run(
        ranged("bytes=5-9"),
        |_| CacheResult::Lead,
        |req| {
            assert!(sent_header(req, "range").is_empty());
            Ok(Reply::new(200).body(BLOB))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(fill_target(&t).1.range, None);
}

#[test]
fn range_on_a_lead_miss_refuses_an_unasked_206() {
    let t = run(
        ranged("bytes=5-9"),
        |_| CacheResult::Lead,
        |_| {
            Ok(Reply::new(206)
                .header("content-range", "bytes 5-9/20")
                .header("content-length", "5")
                .body(&BLOB[5..10]))
        },
    );
    assert_eq!(t.status(), 502, "a 206 to a whole-blob GET is unverifiable");
}

#[test]
fn range_on_a_lead_miss_follows_a_redirect_without_range() {
    let t = run(
        ranged("bytes=5-9"),
        |_| CacheResult::Lead,
        |req| {
            assert!(sent_header(req, "range").is_empty(), "{}", req.url);
            if req.url.path().starts_with("/v2/") {
                Ok(Reply::new(307).header("location", "https://cdn.test/blob?sig=1"))
            } else {
                Ok(Reply::new(200).header("content-length", "20").body(BLOB))
            }
        },
    );
    assert_eq!(t.sent.len(), 2);
    assert_eq!(t.status(), 206);
    assert_eq!(fill_target(&t).1.range, Some((5, 9)));
}

#[test]
fn range_on_a_plain_miss_is_still_forwarded() {
    // A wrapper without a fill-capable store (FFI, Nginx) answers Miss: the range is forwarded
    // and the upstream's 206 relayed, never stored.
    let t = run(
        ranged("bytes=5-9"),
        |_| CacheResult::Miss,
        |req| {
            assert_eq!(sent_header(req, "range"), ["bytes=5-9"]);
            Ok(Reply::new(206)
                .header("content-range", "bytes 5-9/20")
                .header("content-length", "5")
                .body(&BLOB[5..10]))
        },
    );
    assert_eq!(t.status(), 206);
    assert_eq!(t.header("x-cache").unwrap(), "BYPASS");
    assert!(matches!(
        t.response.as_ref().unwrap().body,
        BodyPlan::Upstream { store: None, .. }
    ));
}

#[test]
fn lead_without_range_is_a_plain_miss() {
    let t = run(
        get("docker.example.com", &blob_path()),
        |_| CacheResult::Lead,
        whole_blob,
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("x-cache").unwrap(), "MISS");
    assert_eq!(fill_target(&t).1.range, None);
    // A manifest lead is a miss too.
    let t = run(
        tag_req(&[("range", "bytes=0-3")]),
        |_| CacheResult::Lead,
        |req| {
            assert_eq!(sent_header(req, "range"), ["bytes=0-3"]);
            Ok(Reply::new(200)
                .header("content-type", OCI)
                .header("docker-content-digest", digest().to_string())
                .body(BODY))
        },
    );
    assert_eq!(t.status(), 200);
}

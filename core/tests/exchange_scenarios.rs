//! Scenario tests of the `Exchange` against a fake upstream written as a pure function (no
//! network, simulated clock). Each reads as a transcript: request in, upstream requests and the
//! client response out.

mod support;

use bytes::Bytes;
use dockerproxy_core::exchange::{BodyPlan, Purpose, UpstreamError};
use http::Method;
use support::*;

const MANIFEST: &str = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

fn hub() -> dockerproxy_core::Config {
    let mut c = config();
    set_origin(&mut c, "docker.io", "https://registry.test");
    c
}

/// The fake Docker Hub: `/v2/` challenges, manifests and blobs need `Bearer good`, blobs answer
/// 307 to a CDN that refuses any `Authorization`.
fn fake_hub(req: &dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError> {
    let url = req.url.as_str();
    let auth = sent_header(req, "authorization");
    let authed = auth.iter().any(|a| a == "Bearer good");
    let blob = Bytes::from_static(b"layer bytes");
    let blob_digest = sha256(&blob);
    if req.url.host_str() == Some("cdn.test") {
        if !auth.is_empty() {
            return Ok(Reply::new(400).body("<Error>Authorization not allowed</Error>"));
        }
        return Ok(Reply::new(200)
            .header("content-type", "application/octet-stream")
            .body(blob));
    }
    if req.url.host_str() == Some("auth.test") {
        return Ok(Reply::new(200)
            .json(r#"{"token":"good","access_token":"good","expires_in":300}"#)
            .header("set-cookie", "session=1"));
    }
    if url == "https://registry.test/v2/" {
        if authed {
            return Ok(Reply::new(200).json("{}"));
        }
        return Ok(Reply::new(401)
            .header("www-authenticate", r#"Bearer realm="https://auth.test/token",service="registry.docker.io""#)
            .json(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#));
    }
    if !authed {
        return Ok(Reply::new(401)
            .header(
                "www-authenticate",
                r#"Bearer realm="https://auth.test/token",service="registry.docker.io",scope="repository:library/busybox:pull",error="insufficient_scope""#,
            )
            .json(r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#));
    }
    if url.contains("/manifests/") {
        return Ok(Reply::new(200)
            .header("content-type", OCI_MANIFEST)
            .header("docker-content-digest", sha256(MANIFEST.as_bytes()))
            .body(MANIFEST));
    }
    if url.contains(&format!("/blobs/{blob_digest}")) {
        return Ok(Reply::new(307).header(
            "location",
            format!("https://cdn.test/blob/{blob_digest}?sig=secret"),
        ));
    }
    Ok(Reply::new(404).json(r#"{"errors":[{"code":"BLOB_UNKNOWN","message":"x","detail":null}]}"#))
}

#[test]
fn anonymous_docker_hub_pull() {
    let c = hub();
    let host = "docker.example.com";

    // 1. Ping: 401 with our realm, upstream service kept.
    let t = drive(&c, get(host, "/v2/"), fake_hub);
    assert_eq!(t.status(), 401);
    assert_eq!(
        t.header("www-authenticate").unwrap(),
        r#"Bearer realm="http://docker.example.com/v2/auth",service="registry.docker.io""#
    );
    assert_eq!(
        t.header("docker-distribution-api-version").unwrap(),
        "registry/2.0"
    );
    assert_eq!(t.sent.len(), 1);
    assert_eq!(t.sent[0].purpose, Purpose::Ping);

    // 2. Token: realm discovery without credentials, then the token request with library/.
    let t = drive(
        &c,
        get(host, "/v2/auth?scope=repository:busybox:pull&service=x"),
        fake_hub,
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.sent.len(), 2);
    assert_eq!(t.sent[0].purpose, Purpose::RealmDiscovery);
    assert!(sent_header(&t.sent[0], "authorization").is_empty());
    let token_url = &t.sent[1].url;
    assert_eq!(token_url.host_str(), Some("auth.test"));
    let params: Vec<(String, String)> = token_url.query_pairs().into_owned().collect();
    assert!(
        params.contains(&("service".into(), "registry.docker.io".into())),
        "{params:?}"
    );
    assert!(
        params.contains(&("scope".into(), "repository:library/busybox:pull".into())),
        "{params:?}"
    );
    assert!(
        !params.iter().any(|(_, v)| v == "x"),
        "client service must be ignored"
    );
    assert_eq!(t.header("cache-control").unwrap(), "no-store");
    assert!(t.header("set-cookie").is_none());
    assert_eq!(t.json()["token"], "good");

    // 3. Manifest with the token: forwarded with Authorization, verified, served.
    let t = drive(
        &c,
        request(
            Method::GET,
            host,
            "/v2/library/busybox/manifests/latest",
            &[("authorization", "Bearer good"), ("accept", OCI_MANIFEST)],
        ),
        fake_hub,
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.body_str(), MANIFEST);
    assert_eq!(
        t.header("docker-content-digest").unwrap(),
        sha256(MANIFEST.as_bytes())
    );
    assert_eq!(t.header("content-type").unwrap(), OCI_MANIFEST);
    assert_eq!(
        sent_header(&t.sent[0], "authorization"),
        vec!["Bearer good"]
    );

    // 4. Blob: 307 to the CDN, followed without Authorization, streamed with verification.
    let digest = sha256(b"layer bytes");
    let t = drive(
        &c,
        request(
            Method::GET,
            host,
            &format!("/v2/library/busybox/blobs/{digest}"),
            &[("authorization", "Bearer good")],
        ),
        fake_hub,
    );
    assert_eq!(t.status(), 200, "{:?}", t.response);
    assert_eq!(t.sent.len(), 2);
    assert_eq!(t.sent[1].url.host_str(), Some("cdn.test"));
    assert!(sent_header(&t.sent[1], "authorization").is_empty());
    assert_eq!(t.body_str(), "layer bytes");
    match &t.response.as_ref().unwrap().body {
        BodyPlan::Upstream { verify, .. } => {
            assert_eq!(verify.as_ref().unwrap().to_string(), digest)
        }
        other => panic!("blob must stream from upstream with verification, got {other:?}"),
    }
    assert_eq!(t.header("docker-content-digest").unwrap(), digest);
}

#[test]
fn insufficient_scope_keeps_scope_and_error() {
    let t = drive(
        &hub(),
        get("docker.example.com", "/v2/library/busybox/manifests/latest"),
        fake_hub,
    );
    assert_eq!(t.status(), 401);
    assert_eq!(
        t.header("www-authenticate").unwrap(),
        r#"Bearer realm="http://docker.example.com/v2/auth",service="registry.docker.io",scope="repository:library/busybox:pull",error="insufficient_scope""#
    );
    assert_eq!(t.header("cache-control").unwrap(), "no-store");
    assert_eq!(t.error_code(), "UNAUTHORIZED");
}

#[test]
fn rate_limited_429_keeps_retry_after_and_normalises_bare_text() {
    let c = hub();
    let t = drive(
        &c,
        get("docker.example.com", "/v2/library/busybox/manifests/latest"),
        |_| {
            Ok(Reply::new(429)
                .header("retry-after", "60")
                .header("ratelimit-remaining", "0;w=21600")
                .body("Too Many Requests (HAP429)."))
        },
    );
    assert_eq!(t.status(), 429);
    assert_eq!(t.header("retry-after").unwrap(), "60");
    assert_eq!(t.header("ratelimit-remaining").unwrap(), "0;w=21600");
    assert_eq!(t.error_code(), "TOOMANYREQUESTS");
    assert!(t.stored.is_empty());
}

#[test]
fn redirect_chain_over_the_hop_limit_is_502() {
    let c = hub();
    let digest = sha256(b"x");
    let mut n = 0;
    let t = drive(
        &c,
        get(
            "docker.example.com",
            &format!("/v2/library/busybox/blobs/{digest}"),
        ),
        |_| {
            n += 1;
            Ok(Reply::new(302).header("location", format!("https://cdn.test/hop{n}")))
        },
    );
    assert_eq!(t.status(), 502);
    assert_eq!(t.error_code(), "UNKNOWN");
    assert_eq!(
        t.sent.len(),
        1 + usize::from(c.max_redirects),
        "stops at the hop limit"
    );
}

#[test]
fn head_on_redirected_blob_does_not_download() {
    let c = hub();
    let digest = sha256(b"layer bytes");
    let t = drive(
        &c,
        request(
            Method::HEAD,
            "docker.example.com",
            &format!("/v2/library/busybox/blobs/{digest}"),
            &[("authorization", "Bearer good")],
        ),
        |req| {
            if req.url.host_str() == Some("cdn.test") {
                // Signed for GET only: HEAD refused, a 1-byte range allowed.
                if req.method == Method::HEAD {
                    return Ok(Reply::new(403));
                }
                assert_eq!(sent_header(req, "range"), vec!["bytes=0-0"]);
                return Ok(Reply::new(206)
                    .header("content-range", "bytes 0-0/11")
                    .body("l"));
            }
            fake_hub(req)
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("content-length").unwrap(), "11");
    assert_eq!(t.header("docker-content-digest").unwrap(), digest);
    assert!(t.body.is_empty());
    assert_eq!(
        t.sent.iter().filter(|r| r.method == Method::GET).count(),
        1,
        "only the 1-byte probe is a GET"
    );
}

#[test]
fn blob_with_wrong_digest_in_path_is_verified_while_streaming() {
    // The exchange hands the wrapper the digest to verify against; the wrapper's Verifier aborts.
    let c = hub();
    let digest = sha256(b"something else");
    let t = drive(
        &c,
        request(
            Method::GET,
            "docker.example.com",
            &format!("/v2/library/busybox/blobs/{digest}"),
            &[("authorization", "Bearer good")],
        ),
        |_| Ok(Reply::new(200).body("wrong bytes")),
    );
    match &t.response.unwrap().body {
        BodyPlan::Upstream {
            verify: Some(d), ..
        } => {
            assert_eq!(d.to_string(), digest);
            let mut v = dockerproxy_core::verifier::Verifier::new(d.clone(), None);
            let released = v.push(b"wrong bytes").unwrap();
            assert!(released.len() < 11);
            assert!(v.finish().is_err());
        }
        other => panic!("expected a verified upstream stream, got {other:?}"),
    }
}

#[test]
fn manifest_with_lying_digest_header_is_502_and_not_stored() {
    let c = hub();
    let t = drive(
        &c,
        get("docker.example.com", "/v2/library/busybox/manifests/latest"),
        |_| {
            Ok(Reply::new(200)
                .header("content-type", OCI_MANIFEST)
                .header("docker-content-digest", sha256(b"other"))
                .body(MANIFEST))
        },
    );
    assert_eq!(t.status(), 502);
    assert_eq!(t.error_code(), "DIGEST_INVALID");
    assert!(t.stored.is_empty());
}

#[test]
fn manifest_over_the_cap_is_502() {
    let c = hub();
    let big = "x".repeat(c.limits.max_manifest_bytes + 1);
    let t = drive(
        &c,
        get("docker.example.com", "/v2/library/busybox/manifests/latest"),
        |_| {
            Ok(Reply::new(200)
                .header("content-type", OCI_MANIFEST)
                .body(big.clone()))
        },
    );
    assert_eq!(t.status(), 502);
}

#[test]
fn upstream_timeout_is_504_and_unreachable_is_502() {
    let c = hub();
    let t = drive(&c, get("docker.example.com", "/v2/"), |_| {
        Err(UpstreamError::Timeout)
    });
    assert_eq!(t.status(), 504);
    let t = drive(&c, get("docker.example.com", "/v2/"), |_| {
        Err(UpstreamError::Unreachable)
    });
    assert_eq!(t.status(), 502);
    assert_eq!(t.error_code(), "UNAVAILABLE");
}

#[test]
fn manifest_by_tag_is_stored_under_digest_and_tag() {
    let c = hub();
    let t = drive(
        &c,
        request(
            Method::GET,
            "docker.example.com",
            "/v2/library/busybox/manifests/latest",
            &[("accept", OCI_MANIFEST)],
        ),
        |_| {
            Ok(Reply::new(200)
                .header("content-type", OCI_MANIFEST)
                .body(MANIFEST))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("x-cache").unwrap(), "MISS");
    assert_eq!(t.stored.len(), 1);
    assert_eq!(t.stored[0].digest.to_string(), sha256(MANIFEST.as_bytes()));
    assert!(t.stored[0].tag.is_some());
    assert_eq!(t.lookups, 1);
}

#[test]
fn unverifiable_success_statuses_are_never_relayed_as_content() {
    let c = hub();
    let digest = sha256(b"blob");
    for status in [201u16, 203, 204, 206] {
        let t = drive(
            &c,
            request(
                Method::GET,
                "docker.example.com",
                &format!("/v2/library/busybox/blobs/{digest}"),
                &[("authorization", "Bearer good")],
            ),
            |_| Ok(Reply::new(status).body("hello blob")),
        );
        assert_eq!(
            t.status(),
            502,
            "status {status} must not pass unverified bytes"
        );
        let t = drive(
            &c,
            get("docker.example.com", "/v2/library/busybox/manifests/latest"),
            |_| {
                Ok(Reply::new(status)
                    .header("content-type", OCI_MANIFEST)
                    .body(MANIFEST))
            },
        );
        assert_eq!(t.status(), 502, "manifest status {status}");
    }
    // A 206 answering the client's own Range is relayed (unverified, never stored).
    let t = drive(
        &c,
        request(
            Method::GET,
            "docker.example.com",
            &format!("/v2/library/busybox/blobs/{digest}"),
            &[("range", "bytes=0-1")],
        ),
        |_| {
            Ok(Reply::new(206)
                .header("content-range", "bytes 0-1/4")
                .body("bl"))
        },
    );
    assert_eq!(t.status(), 206);
    assert_eq!(t.header("x-cache").unwrap(), "BYPASS");
}

#[test]
fn multi_range_on_a_cold_blob_asks_for_the_whole_verified_blob() {
    let c = hub();
    let digest = sha256(b"blob");
    let t = drive(
        &c,
        request(
            Method::GET,
            "docker.example.com",
            &format!("/v2/library/busybox/blobs/{digest}"),
            &[("range", "bytes=0-0,1-1"), ("if-range", "x")],
        ),
        |req| {
            assert!(
                sent_header(req, "range").is_empty(),
                "multi-range is not forwarded"
            );
            assert!(sent_header(req, "if-range").is_empty());
            Ok(Reply::new(200).body("blob"))
        },
    );
    assert_eq!(t.status(), 200);
    assert!(matches!(
        t.response.unwrap().body,
        BodyPlan::Upstream {
            verify: Some(_),
            ..
        }
    ));
}

#[test]
fn token_server_redirect_is_refused_not_relayed() {
    let t = drive(
        &hub(),
        get(
            "docker.example.com",
            "/v2/auth?scope=repository:library/busybox:pull",
        ),
        |req| {
            if req.url.path() == "/v2/" {
                return fake_hub(req);
            }
            Ok(Reply::new(302).header("location", "http://127.0.0.1:1/steal"))
        },
    );
    assert_eq!(t.status(), 502);
    assert!(t.header("location").is_none());
}

#[test]
fn hostile_pagination_is_rejected_before_any_upstream_request() {
    for q in ["n=99999999999999999999999", "n=-1", "n=abc", "n=10001"] {
        let t = drive(
            &hub(),
            get(
                "docker.example.com",
                &format!("/v2/library/busybox/tags/list?{q}"),
            ),
            no_upstream,
        );
        assert_eq!(t.status(), 400, "{q}");
    }
    let t = drive(
        &hub(),
        get(
            "docker.example.com",
            "/v2/library/busybox/tags/list?n=100&last=a",
        ),
        |req| {
            assert_eq!(req.url.query(), Some("n=100&last=a"));
            Ok(Reply::new(200).json(r#"{"name":"library/busybox","tags":[]}"#))
        },
    );
    assert_eq!(t.status(), 200);
}

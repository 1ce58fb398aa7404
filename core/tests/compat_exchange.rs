//! COMPAT.md §9 cases decided by the core, run through a whole `Exchange` against fake upstreams.
//! Test names carry the case id.

mod support;

use bytes::Bytes;
use dockerproxy_core::exchange::{LocalEndpoint, UpstreamError};
use http::Method;
use support::*;

fn cfg() -> dockerproxy_core::Config {
    let mut c = config();
    set_origin(&mut c, "docker.io", "https://hub.test");
    set_origin(&mut c, "ghcr.io", "https://ghcr.test");
    set_origin(&mut c, "quay.io", "https://quay.test");
    c
}

fn mirror_cfg() -> dockerproxy_core::Config {
    let mut c = cfg();
    c.mirror_hosts = vec!["mirror.example.com".to_owned()];
    c
}

fn ok_json(_: &dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError> {
    Ok(Reply::new(200).json("{}"))
}

fn challenge(
    realm: &str,
    service: &str,
) -> impl FnMut(&dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError> {
    let value = format!(r#"Bearer realm="{realm}",service="{service}""#);
    move |req| {
        if req.url.path() == "/v2/" {
            Ok(Reply::new(401)
                .header("www-authenticate", value.clone())
                .json(r#"{"errors":[]}"#))
        } else {
            Ok(Reply::new(200).json(r#"{"token":"t","expires_in":300}"#))
        }
    }
}

#[test]
fn compat_01_unknown_host_lists_routes() {
    let t = drive(&cfg(), get("unknown.example.org", "/v2/"), no_upstream);
    assert_eq!(t.status(), 404);
    assert_eq!(t.header("content-type").unwrap(), "application/json");
    let v = t.json();
    assert_eq!(v["message"], "Available registry routes");
    let routes = v["routes"].as_object().unwrap();
    assert_eq!(routes.len(), 9);
    assert_eq!(routes["k8s.example.com"], "https://registry.k8s.io");
    assert!(t.body_str().ends_with('\n'));
}

#[test]
fn compat_02_root_on_unknown_host_lists_routes() {
    let t = drive(&cfg(), get("nope.test", "/"), no_upstream);
    assert_eq!(t.status(), 404);
    assert_eq!(t.json()["routes"].as_object().unwrap().len(), 9);
}

#[test]
fn compat_03_root_redirects_to_v2() {
    for m in [Method::GET, Method::HEAD] {
        let t = drive(
            &cfg(),
            request(m, "docker.example.com", "/?x=1", &[]),
            no_upstream,
        );
        assert_eq!(t.status(), 301);
        assert_eq!(t.header("location").unwrap(), "/v2/");
    }
}

#[test]
fn compat_04_each_host_pings_its_upstream() {
    let c = config();
    for (host, origin) in [
        ("docker.example.com", "https://registry-1.docker.io/v2/"),
        ("quay.example.com", "https://quay.io/v2/"),
        ("gcr.example.com", "https://gcr.io/v2/"),
        ("k8s-gcr.example.com", "https://k8s.gcr.io/v2/"),
        ("k8s.example.com", "https://registry.k8s.io/v2/"),
        ("ghcr.example.com", "https://ghcr.io/v2/"),
        ("cloudsmith.example.com", "https://docker.cloudsmith.io/v2/"),
        ("ecr.example.com", "https://public.ecr.aws/v2/"),
        (
            "docker-staging.example.com",
            "https://registry-1.docker.io/v2/",
        ),
    ] {
        let t = drive(&c, get(host, "/v2/"), ok_json);
        assert_eq!(t.sent.len(), 1, "{host}");
        assert_eq!(t.sent[0].url.as_str(), origin, "{host}");
        assert_eq!(t.sent[0].method, Method::GET);
    }
}

#[test]
fn compat_08_health_is_local_on_any_host() {
    for host in ["docker.example.com", "unknown.example.org"] {
        for path in ["/health", "/healthz"] {
            let t = drive(&cfg(), get(host, path), no_upstream);
            assert_eq!(t.local, Some(LocalEndpoint::Health));
        }
    }
    let t = drive(
        &cfg(),
        request(Method::HEAD, "x", "/health", &[]),
        no_upstream,
    );
    assert_eq!(t.local, Some(LocalEndpoint::Health));
}

#[test]
fn compat_09_ping_challenge_rewritten() {
    let t = drive(&cfg(), get("docker.example.com", "/v2/"), |_| {
        Ok(Reply::new(401)
            .header(
                "www-authenticate",
                r#"Bearer realm="https://auth.test/token",service="registry.docker.io""#,
            )
            .json(r#"{"errors":[{"code":"UNAUTHORIZED","message":"m","detail":null}]}"#))
    });
    assert_eq!(t.status(), 401);
    assert_eq!(
        t.header("www-authenticate").unwrap(),
        r#"Bearer realm="http://docker.example.com/v2/auth",service="registry.docker.io""#
    );
    assert_eq!(
        t.header("docker-distribution-api-version").unwrap(),
        "registry/2.0"
    );
    assert_eq!(
        t.json()["errors"][0]["message"],
        "m",
        "upstream body relayed"
    );
}

fn ping_401(_: &dockerproxy_core::exchange::UpstreamRequest) -> Result<Reply, UpstreamError> {
    Ok(Reply::new(401).header(
        "www-authenticate",
        r#"Bearer realm="https://auth.test/token",service="s""#,
    ))
}

#[test]
fn compat_10_forwarded_proto_only_from_trusted_peers() {
    let mut req = request(
        Method::GET,
        "docker.example.com",
        "/v2/",
        &[("x-forwarded-proto", "https")],
    );
    let t = drive(&cfg(), req.clone(), ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains(r#"realm="https://docker.example.com/v2/auth""#)
    );
    req.peer = Some("203.0.113.9".parse().unwrap());
    let t = drive(&cfg(), req, ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains(r#"realm="http://docker.example.com/v2/auth""#)
    );
    let mut c = cfg();
    c.public_scheme = Some(dockerproxy_core::config::Scheme::Https);
    let t = drive(&c, get("docker.example.com", "/v2/"), ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains(r#"realm="https://docker.example.com/v2/auth""#)
    );
    // An empty upstream 401 body becomes an OCI UNAUTHORIZED error.
    assert_eq!(t.error_code(), "UNAUTHORIZED");
}

#[test]
fn compat_11_realm_keeps_the_port() {
    let t = drive(&cfg(), get("docker.example.com:5000", "/v2/"), ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains(r#"realm="http://docker.example.com:5000/v2/auth""#)
    );
    let mut req = get("docker.example.com:443", "/v2/");
    req.tls = true;
    let t = drive(&cfg(), req, ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains(r#"realm="https://docker.example.com/v2/auth""#)
    );
}

#[test]
fn compat_12_ping_with_token_relays_200() {
    let t = drive(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/",
            &[("authorization", "Bearer good")],
        ),
        |req| {
            assert_eq!(sent_header(req, "authorization"), vec!["Bearer good"]);
            Ok(Reply::new(200).json("{}"))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.body_str(), "{}");
}

#[test]
fn compat_13_and_14_open_registry_and_v2_without_slash() {
    let t = drive(&config(), get("k8s.example.com", "/v2"), ok_json);
    assert_eq!(t.status(), 200);
    assert!(t.header("www-authenticate").is_none());
    assert_eq!(t.sent[0].url.path(), "/v2/");
}

#[test]
fn compat_16_token_request_gets_library_and_upstream_service() {
    let t = drive(
        &cfg(),
        get(
            "docker.example.com",
            "/v2/auth?scope=repository:busybox:pull&service=x",
        ),
        challenge("https://auth.test/token", "registry.docker.io"),
    );
    assert_eq!(t.status(), 200);
    let q: Vec<(String, String)> = t.sent[1].url.query_pairs().into_owned().collect();
    assert!(q.contains(&("scope".into(), "repository:library/busybox:pull".into())));
    assert!(q.contains(&("service".into(), "registry.docker.io".into())));
    assert_eq!(t.json()["token"], "t", "token JSON relayed verbatim");
}

#[test]
fn compat_17_push_actions_become_pull() {
    let t = drive(
        &cfg(),
        get(
            "docker.example.com",
            "/v2/auth?scope=repository:foo/bar:pull,push",
        ),
        challenge("https://auth.test/token", "s"),
    );
    let q: Vec<(String, String)> = t.sent[1].url.query_pairs().into_owned().collect();
    assert!(
        q.contains(&("scope".into(), "repository:foo/bar:pull".into())),
        "{q:?}"
    );
}

#[test]
fn compat_18_no_library_outside_docker_hub() {
    let t = drive(
        &cfg(),
        get("ghcr.example.com", "/v2/auth?scope=repository:busybox:pull"),
        challenge("https://ghcr.test/token", "ghcr.io"),
    );
    let q: Vec<(String, String)> = t.sent[1].url.query_pairs().into_owned().collect();
    assert!(
        q.contains(&("scope".into(), "repository:busybox:pull".into())),
        "{q:?}"
    );
}

#[test]
fn compat_19_client_basic_goes_to_token_request_only() {
    let t = drive(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/auth?scope=repository:a/b:pull",
            &[("authorization", "Basic dTpw")],
        ),
        challenge("https://auth.test/token", "s"),
    );
    assert!(
        sent_header(&t.sent[0], "authorization").is_empty(),
        "realm discovery is anonymous"
    );
    assert_eq!(sent_header(&t.sent[1], "authorization"), vec!["Basic dTpw"]);
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/auth?scope=repository:a/b:pull"),
        challenge("https://auth.test/token", "s"),
    );
    assert!(sent_header(&t.sent[1], "authorization").is_empty());
}

#[test]
fn compat_21_token_server_401_relayed() {
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/auth?scope=repository:a/b:pull"),
        |req| {
            if req.url.path() == "/v2/" {
                Ok(Reply::new(401).header(
                    "www-authenticate",
                    r#"Bearer realm="https://auth.test/token",service="s""#,
                ))
            } else {
                Ok(Reply::new(401).json(r#"{"details":"incorrect username or password"}"#))
            }
        },
    );
    assert_eq!(t.status(), 401);
    assert_eq!(t.json()["details"], "incorrect username or password");
}

#[test]
fn compat_22_reordered_challenge_parameters() {
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/auth?scope=repository:a/b:pull"),
        |req| {
            if req.url.path() == "/v2/" {
                Ok(Reply::new(401).header(
                    "www-authenticate",
                    r#"Bearer service="svc",realm="https://t.test/token""#,
                ))
            } else {
                Ok(Reply::new(200).json(r#"{"token":"t"}"#))
            }
        },
    );
    assert_eq!(t.sent[1].url.host_str(), Some("t.test"));
    assert!(
        t.sent[1]
            .url
            .query_pairs()
            .any(|(k, v)| k == "service" && v == "svc")
    );
}

#[test]
fn compat_23_24_every_scope_forwarded() {
    for target in [
        "/v2/auth?scope=repository:a/b:pull&scope=registry:catalog:*",
        "/v2/auth?scope=repository:a/b:pull%20registry:catalog:*",
    ] {
        let t = drive(
            &cfg(),
            get("docker.example.com", target),
            challenge("https://auth.test/token", "s"),
        );
        let scopes: Vec<String> = t.sent[1]
            .url
            .query_pairs()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
        assert_eq!(
            scopes,
            vec![
                "repository:a/b:pull".to_owned(),
                "registry:catalog:*".to_owned()
            ],
            "{target}"
        );
    }
}

#[test]
fn compat_25_oauth_post_form() {
    let form = Bytes::from_static(b"grant_type=refresh_token&refresh_token=r&service=x&scope=repository:busybox:pull&client_id=docker");
    let t = drive_with(
        &cfg(),
        request(
            Method::POST,
            "docker.example.com",
            "/v2/auth",
            &[("content-type", "application/x-www-form-urlencoded")],
        ),
        Some(form),
        |_| dockerproxy_core::exchange::CacheResult::Miss,
        |req| {
            if req.url.path() == "/v2/" {
                return Ok(Reply::new(401).header(
                    "www-authenticate",
                    r#"Bearer realm="https://auth.test/token",service="registry.docker.io""#,
                ));
            }
            assert_eq!(req.method, Method::POST);
            let dockerproxy_core::exchange::UpstreamBody::Bytes(body) = &req.body else {
                panic!("form body expected")
            };
            assert_eq!(
                sent_header(req, "content-length"),
                vec![body.len().to_string()]
            );
            let pairs: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
            assert!(
                pairs.contains(&("service".into(), "registry.docker.io".into())),
                "{pairs:?}"
            );
            assert!(
                pairs.contains(&("scope".into(), "repository:library/busybox:pull".into())),
                "{pairs:?}"
            );
            assert!(pairs.contains(&("grant_type".into(), "refresh_token".into())));
            assert!(pairs.contains(&("refresh_token".into(), "r".into())));
            Ok(Reply::new(400).json(r#"{"error":"invalid_grant"}"#))
        },
    );
    assert_eq!(t.status(), 400, "4xx relayed verbatim");
    assert_eq!(t.json()["error"], "invalid_grant");
}

#[test]
fn compat_26_27_28_library_redirects() {
    let t = drive(
        &cfg(),
        get(
            "docker.example.com",
            "/v2/busybox/manifests/latest?ns=docker.io",
        ),
        no_upstream,
    );
    assert_eq!(t.status(), 301);
    assert_eq!(
        t.header("location").unwrap(),
        "/v2/library/busybox/manifests/latest?ns=docker.io"
    );
    assert_eq!(t.header("oci-namespace").unwrap(), "docker.io");
    let t = drive(
        &cfg(),
        request(
            Method::HEAD,
            "docker.example.com",
            "/v2/busybox/manifests/latest",
            &[],
        ),
        no_upstream,
    );
    assert_eq!(t.status(), 301);
    let d = sha256(b"x");
    let t = drive(
        &cfg(),
        get("docker.example.com", &format!("/v2/busybox/blobs/{d}")),
        no_upstream,
    );
    assert_eq!(
        t.header("location").unwrap(),
        format!("/v2/library/busybox/blobs/{d}")
    );
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/busybox/tags/list"),
        no_upstream,
    );
    assert_eq!(
        t.header("location").unwrap(),
        "/v2/library/busybox/tags/list"
    );
}

#[test]
fn compat_29_30_no_redirect_for_two_components_or_other_registries() {
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/foo/bar/manifests/latest"),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(t.sent[0].url.path(), "/v2/foo/bar/manifests/latest");
    let t = drive(
        &cfg(),
        get("quay.example.com", "/v2/foo/manifests/latest"),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(
        t.sent[0].url.as_str(),
        "https://quay.test/v2/foo/manifests/latest"
    );
}

#[test]
fn compat_31_unknown_path_is_404_unsupported() {
    let t = drive(&cfg(), get("docker.example.com", "/a/b/c/d"), no_upstream);
    assert_eq!(t.status(), 404);
    assert_eq!(t.error_code(), "UNSUPPORTED");
}

#[test]
fn compat_32_headers_and_body_relayed() {
    let t = drive(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/library/busybox/tags/list",
            &[
                ("authorization", "Bearer good"),
                ("accept", "a/b"),
                ("accept", "c/d"),
            ],
        ),
        |req| {
            assert_eq!(sent_header(req, "authorization"), vec!["Bearer good"]);
            assert_eq!(sent_header(req, "accept"), vec!["a/b", "c/d"]);
            Ok(Reply::new(200)
                .json(r#"{"name":"library/busybox","tags":["latest"]}"#)
                .header("content-length", "44"))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.header("content-length").unwrap(), "44");
    assert_eq!(t.json()["tags"][0], "latest");
}

#[test]
fn compat_33_query_forwarded() {
    let t = drive(
        &cfg(),
        get(
            "docker.example.com",
            "/v2/library/busybox/tags/list?n=10&last=a",
        ),
        ok_json,
    );
    assert_eq!(t.sent[0].url.query(), Some("n=10&last=a"));
}

#[test]
fn compat_34_404_relayed_5xx_becomes_502() {
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/library/busybox/manifests/nope"),
        |_| {
            Ok(Reply::new(404)
                .json(r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"m","detail":null}]}"#))
        },
    );
    assert_eq!(t.status(), 404);
    assert_eq!(t.error_code(), "MANIFEST_UNKNOWN");
    let t = drive(
        &cfg(),
        get("docker.example.com", "/v2/library/busybox/manifests/x"),
        |_| {
            Ok(Reply::new(503)
                .header("retry-after", "5")
                .body("<html>down</html>"))
        },
    );
    assert_eq!(t.status(), 502);
    assert_eq!(t.error_code(), "UNAVAILABLE");
    assert_eq!(t.header("retry-after").unwrap(), "5");
}

#[test]
fn compat_35_hop_by_hop_headers_not_forwarded() {
    let t = drive(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/library/busybox/tags/list",
            &[
                ("connection", "close, X-Hop"),
                ("x-hop", "1"),
                ("upgrade", "h2c"),
                ("proxy-connection", "k"),
                ("keep-alive", "5"),
                ("te", "trailers"),
            ],
        ),
        ok_json,
    );
    let h = &t.sent[0].headers;
    for name in [
        "connection",
        "x-hop",
        "upgrade",
        "proxy-connection",
        "keep-alive",
        "te",
        "host",
    ] {
        assert!(!h.contains_key(name), "{name} forwarded");
    }
}

#[test]
fn compat_36_and_49_writes_refused_without_allow_push() {
    for m in [Method::PUT, Method::PATCH, Method::DELETE, Method::POST] {
        let t = drive(
            &cfg(),
            request(
                m.clone(),
                "docker.example.com",
                "/v2/library/busybox/manifests/latest",
                &[],
            ),
            no_upstream,
        );
        assert_eq!(t.status(), 405, "{m}");
        assert_eq!(t.header("allow").unwrap(), "GET, HEAD");
        assert_eq!(t.error_code(), "UNSUPPORTED");
    }
}

#[test]
fn compat_36_allow_push_forwards_and_rewrites_location() {
    let mut c = cfg();
    let id = c.registry_by_name("docker.io").unwrap();
    c.registries[id].allow_push = true;
    let t = drive(
        &c,
        request(
            Method::PATCH,
            "docker.example.com",
            "/v2/library/busybox/blobs/uploads/abc",
            &[("content-length", "3")],
        ),
        |req| {
            assert_eq!(req.method, Method::PATCH);
            assert_eq!(req.body, dockerproxy_core::exchange::UpstreamBody::Client);
            assert_eq!(sent_header(req, "content-length"), vec!["3"]);
            Ok(Reply::new(202).header(
                "location",
                "https://hub.test/v2/library/busybox/blobs/uploads/abc?_state=x",
            ))
        },
    );
    assert_eq!(t.status(), 202);
    assert_eq!(
        t.header("location").unwrap(),
        "http://docker.example.com/v2/library/busybox/blobs/uploads/abc?_state=x"
    );
}

#[test]
fn compat_41_pass_through_redirects_on_pass_routes() {
    let mut c = cfg();
    let id = c.registry_by_name("ghcr.io").unwrap();
    c.registries[id].redirects = dockerproxy_core::config::RedirectMode::Pass;
    let d = sha256(b"x");
    let t = drive(
        &c,
        get("ghcr.example.com", &format!("/v2/o/i/blobs/{d}")),
        |_| Ok(Reply::new(307).header("location", "/storage/blob?sig=1")),
    );
    assert_eq!(t.status(), 307);
    assert_eq!(
        t.header("location").unwrap(),
        "https://ghcr.test/storage/blob?sig=1"
    );
    assert_eq!(t.header("x-cache").unwrap(), "BYPASS");
    assert_eq!(t.sent.len(), 1);
}

#[test]
fn compat_43_relative_location_followed() {
    let d = sha256(b"ok");
    let t = drive(
        &cfg(),
        get("ghcr.example.com", &format!("/v2/o/i/blobs/{d}")),
        |req| {
            if req.url.path().starts_with("/v2/") {
                Ok(Reply::new(302).header("location", "../../../cdn/x"))
            } else {
                Ok(Reply::new(200).body("ok"))
            }
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.sent[1].url.as_str(), "https://ghcr.test/v2/cdn/x");
}

#[test]
fn compat_59_mirror_host_ns_routes_and_echoes() {
    let t = drive(
        &mirror_cfg(),
        get("mirror.example.com", "/v2/foo/bar/manifests/1?ns=ghcr.io"),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(
        t.sent[0].url.as_str(),
        "https://ghcr.test/v2/foo/bar/manifests/1?ns=ghcr.io"
    );
    assert_eq!(t.header("oci-namespace").unwrap(), "ghcr.io");
}

#[test]
fn compat_60_unknown_or_mismatched_ns() {
    let t = drive(
        &mirror_cfg(),
        get("mirror.example.com", "/v2/foo/bar/manifests/1?ns=nvcr.io"),
        no_upstream,
    );
    assert_eq!(t.status(), 404);
    assert_eq!(t.error_code(), "NAME_UNKNOWN");
    let t = drive(
        &mirror_cfg(),
        get("docker.example.com", "/v2/foo/bar/manifests/1?ns=ghcr.io"),
        no_upstream,
    );
    assert_eq!(t.status(), 400);
    assert_eq!(t.error_code(), "NAME_INVALID");
}

#[test]
fn compat_61_mirror_realm_carries_ns_and_token_omits_it() {
    let c = mirror_cfg();
    let t = drive(
        &c,
        get("mirror.example.com", "/v2/foo/bar/manifests/1?ns=ghcr.io"),
        |_| {
            Ok(Reply::new(401).header("www-authenticate", r#"Bearer realm="https://ghcr.test/token",service="ghcr.io",scope="repository:foo/bar:pull""#))
        },
    );
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .starts_with(r#"Bearer realm="http://mirror.example.com/v2/auth?ns=ghcr.io""#)
    );
    let t = drive(
        &c,
        get(
            "mirror.example.com",
            "/v2/auth?ns=ghcr.io&scope=repository:foo/bar:pull",
        ),
        challenge("https://ghcr.test/token", "ghcr.io"),
    );
    assert_eq!(t.sent[0].url.as_str(), "https://ghcr.test/v2/");
    let q: Vec<(String, String)> = t.sent[1].url.query_pairs().into_owned().collect();
    assert!(!q.iter().any(|(k, _)| k == "ns"), "{q:?}");
    assert!(q.contains(&("service".into(), "ghcr.io".into())));
}

#[test]
fn compat_62_containerd_head_resolve() {
    let m = r#"{"schemaVersion":2}"#;
    let t = drive(
        &cfg(),
        request(
            Method::HEAD,
            "docker.example.com",
            "/v2/library/nginx/manifests/1?ns=docker.io",
            &[],
        ),
        |req| {
            assert_eq!(req.method, Method::HEAD);
            Ok(Reply::new(200)
                .header("docker-content-digest", sha256(m.as_bytes()))
                .header("content-length", m.len().to_string())
                .header("content-type", "application/vnd.oci.image.manifest.v1+json"))
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(
        t.header("docker-content-digest").unwrap(),
        sha256(m.as_bytes())
    );
    assert_eq!(t.header("content-length").unwrap(), m.len().to_string());
    assert_eq!(t.header("oci-namespace").unwrap(), "docker.io");
    assert!(t.body.is_empty());
}

#[test]
fn compat_63_docker_engine_mirror_no_ns() {
    for host in ["docker.example.com", "mirror.example.com"] {
        let t = drive(
            &mirror_cfg(),
            get(host, "/v2/library/nginx/manifests/latest"),
            |_| Ok(Reply::new(404).json("{}")),
        );
        assert_eq!(
            t.sent[0].url.as_str(),
            "https://hub.test/v2/library/nginx/manifests/latest"
        );
        assert!(t.header("oci-namespace").is_none());
    }
}

#[test]
fn compat_64_mirror_host_with_port() {
    let t = drive(
        &mirror_cfg(),
        get(
            "mirror.example.com:5000",
            "/v2/library/nginx/manifests/latest",
        ),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(t.sent[0].url.host_str(), Some("hub.test"));
    let t = drive(
        &cfg(),
        get(
            "mirror.example.com:5000",
            "/v2/library/nginx/manifests/latest",
        ),
        no_upstream,
    );
    assert_eq!(t.status(), 404);
    assert!(t.json()["routes"].is_object());
}

#[test]
fn compat_65_path_prefix() {
    let t = drive(
        &mirror_cfg(),
        get("mirror.example.com", "/v2/ghcr.io/foo/bar/manifests/1"),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(
        t.sent[0].url.as_str(),
        "https://ghcr.test/v2/foo/bar/manifests/1"
    );
    let t = drive(
        &mirror_cfg(),
        get("mirror.example.com", "/v2/docker.io/nginx/manifests/1"),
        no_upstream,
    );
    assert_eq!(t.status(), 301);
    assert_eq!(
        t.header("location").unwrap(),
        "/v2/docker.io/library/nginx/manifests/1"
    );
}

#[test]
fn compat_66_scope_prefix_routes_auth_on_mirror() {
    let t = drive(
        &mirror_cfg(),
        get(
            "mirror.example.com",
            "/v2/auth?scope=repository:ghcr.io/foo/bar:pull",
        ),
        challenge("https://ghcr.test/token", "ghcr.io"),
    );
    assert_eq!(t.sent[0].url.as_str(), "https://ghcr.test/v2/");
    let q: Vec<(String, String)> = t.sent[1].url.query_pairs().into_owned().collect();
    assert!(
        q.contains(&("scope".into(), "repository:foo/bar:pull".into())),
        "{q:?}"
    );
}

#[test]
fn compat_71_follow_all_false_passes_non_docker_redirects() {
    let c = {
        let mut c = config_with(&[("FOLLOW_ALL_REDIRECTS", "false")]);
        set_origin(&mut c, "docker.io", "https://hub.test");
        set_origin(&mut c, "ghcr.io", "https://ghcr.test");
        c
    };
    let d = sha256(b"x");
    let t = drive(
        &c,
        get("ghcr.example.com", &format!("/v2/o/i/blobs/{d}")),
        |_| Ok(Reply::new(307).header("location", "https://pkg-containers.test/blob")),
    );
    assert_eq!(t.status(), 307);
    assert_eq!(
        t.header("location").unwrap(),
        "https://pkg-containers.test/blob"
    );
    let t = drive(
        &c,
        get("docker.example.com", &format!("/v2/library/x/blobs/{d}")),
        |req| {
            if req.url.host_str() == Some("hub.test") {
                Ok(Reply::new(307)
                    .header("location", "https://production.cloudflare.docker.com/blob"))
            } else {
                Ok(Reply::new(200).body("x"))
            }
        },
    );
    assert_eq!(t.status(), 200);
    assert_eq!(t.sent.len(), 2);
}

#[test]
fn compat_75_basic_challenge_relayed_unchanged() {
    let t = drive(&cfg(), get("quay.example.com", "/v2/"), |_| {
        Ok(Reply::new(401).header("www-authenticate", r#"Basic realm="x""#))
    });
    assert_eq!(t.status(), 401);
    assert_eq!(t.header("www-authenticate").unwrap(), r#"Basic realm="x""#);
}

#[test]
fn compat_76_two_accept_lines_stay_two() {
    let t = drive(
        &cfg(),
        request(
            Method::GET,
            "docker.example.com",
            "/v2/library/x/manifests/1",
            &[
                ("accept", "application/vnd.oci.image.index.v1+json"),
                ("accept", "application/vnd.oci.image.manifest.v1+json"),
            ],
        ),
        |_| Ok(Reply::new(404).json("{}")),
    );
    assert_eq!(
        sent_header(&t.sent[0], "accept"),
        vec![
            "application/vnd.oci.image.index.v1+json",
            "application/vnd.oci.image.manifest.v1+json"
        ]
    );
}

#[test]
fn invalid_names_tags_digests_are_400_without_upstream() {
    for (path, code) in [
        ("/v2/library/Busybox/manifests/latest", "NAME_INVALID"),
        ("/v2/library/busybox/manifests/-bad", "TAG_INVALID"),
        ("/v2/library/busybox/blobs/sha256:abc", "DIGEST_INVALID"),
        ("/v2/library/%2e%2e/manifests/latest", "NAME_INVALID"),
    ] {
        let t = drive(&cfg(), get("docker.example.com", path), no_upstream);
        assert_eq!(t.status(), 400, "{path}");
        assert_eq!(t.error_code(), code, "{path}");
    }
}

#[test]
fn absolute_form_and_connect_are_refused() {
    let t = drive(
        &cfg(),
        get("docker.example.com", "http://evil.test/v2/"),
        no_upstream,
    );
    assert_eq!(t.status(), 400);
    let t = drive(
        &cfg(),
        request(Method::CONNECT, "docker.example.com", "/", &[]),
        no_upstream,
    );
    assert_eq!(t.status(), 400);
}

#[test]
fn compat_58_cache_disabled_means_bypass_and_no_lookup() {
    let mut c = cfg();
    c.cache.enabled = false;
    let t = drive(
        &c,
        get("docker.example.com", "/v2/library/x/manifests/1"),
        |_| {
            Ok(Reply::new(200)
                .header("content-type", "application/vnd.oci.image.manifest.v1+json")
                .body(r#"{"schemaVersion":2}"#))
        },
    );
    assert_eq!(t.lookups, 0);
    assert_eq!(t.header("x-cache").unwrap(), "BYPASS");
    assert!(t.stored.is_empty());
}

#[test]
fn ipv4_mapped_loopback_peers_count_as_loopback_and_trusted() {
    let mut c = cfg();
    c.metrics = dockerproxy_core::config::Exposure::Loopback;
    let mut req = get("x", "/metrics");
    req.peer = Some("::ffff:127.0.0.1".parse().unwrap());
    let t = drive(&c, req, no_upstream);
    assert_eq!(t.local, Some(LocalEndpoint::Metrics));
    let mut req = get("x", "/metrics");
    req.peer = Some("::ffff:203.0.113.9".parse().unwrap());
    let t = drive(&c, req, no_upstream);
    assert_eq!(t.status(), 404);
    let mut req = request(
        Method::GET,
        "docker.example.com",
        "/v2/",
        &[("x-forwarded-proto", "https")],
    );
    req.peer = Some("::ffff:127.0.0.1".parse().unwrap());
    let t = drive(&c, req, ping_401);
    assert!(
        t.header("www-authenticate")
            .unwrap()
            .contains("realm=\"https://")
    );
}

//! Integrity on the streaming path (SECURITY.md §2.4): a blob whose bytes do not match the
//! requested digest reaches the client as an aborted response, never a clean end.
//!
//! The upstream is a tiny hyper server on 127.0.0.1 that serves chosen bytes (real registries
//! cannot be made to serve wrong ones).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Server, proxy_config, raw_request, upstream};
use dockerproxy_core::verifier::sha256_digest;

async fn pull(server: &Server, digest: &str) -> (common::Reply, bool) {
    let raw = format!(
        "GET /v2/team/app/blobs/{digest} HTTP/1.1\r\nHost: local.example.com\r\nConnection: close\r\n\r\n"
    );
    tokio::time::timeout(
        Duration::from_secs(20),
        raw_request(server.addr, raw.as_bytes()),
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn matching_bytes_arrive_complete() {
    let good = Bytes::from(vec![7u8; 200 * 1024]);
    let digest = sha256_digest(&good).to_string();
    let up = upstream(good.clone()).await;
    let server = Server::start(proxy_config(up)).await;
    let (reply, complete) = pull(&server, &digest).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(complete, "{}", reply.head);
    assert_eq!(reply.body, good.to_vec());
    server.stop().await;
}

#[tokio::test]
async fn wrong_bytes_abort_the_client_stream() {
    let expected = Bytes::from(vec![7u8; 200 * 1024]);
    let digest = sha256_digest(&expected).to_string();
    // Same length, last byte wrong: the held-back tail must never be sent.
    let mut wrong = expected.to_vec();
    let last = wrong.len() - 1;
    wrong[last] = 8;
    let up = upstream(Bytes::from(wrong)).await;
    let server = Server::start(proxy_config(up)).await;
    let (reply, complete) = pull(&server, &digest).await;
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(
        !complete,
        "the client saw a clean end: {} body bytes\n{}",
        reply.body.len(),
        reply.head
    );
    assert!(reply.body.len() < expected.len());
    server.stop().await;

    // A small wrong body: nothing at all is released.

    let small = Bytes::from_static(b"hello");
    let digest = sha256_digest(&small).to_string();
    let up = upstream(Bytes::from_static(b"hellx")).await;
    let server = Server::start(proxy_config(up)).await;
    let (reply, complete) = pull(&server, &digest).await;
    // Either no head at all (hyper had not flushed it) or a head and no byte: never a clean end.
    assert!(!complete, "{}", reply.head);
    assert!(reply.status == 0 || reply.status == 200, "{}", reply.head);
    assert!(reply.body.is_empty(), "{:?}", reply.body);
    let metrics = common::request(server.addr, "GET", "/metrics", "x")
        .await
        .text();
    assert!(
        metrics.contains(
            "dockerproxy_integrity_failures_total{registry=\"local.test\",kind=\"blob\"} 1"
        ),
        "{metrics}"
    );
    server.stop().await;
}

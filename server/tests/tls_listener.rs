//! A TLS listener: rustls with the ring provider, HTTP/2 chosen by ALPN only (no version sniff),
//! HTTP/1.1 otherwise. The certificate in `fixtures/` is a test certificate for
//! `localhost` / 127.0.0.1 signed by `fixtures/ca.pem`, generated locally for these tests.

mod common;

use std::time::Duration;

use common::{client_tls, config, fixture};
use dockerproxy_server::{Listener, run_listeners};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::{TcpListener, TcpStream};

async fn start() -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let toml = format!(
        "tls_cert = {:?}\ntls_key = {:?}\n",
        fixture("cert.pem"),
        fixture("key.pem")
    );
    let state = dockerproxy_server::build_state(config(&[], Some(&toml))).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(run_listeners(
        vec![Listener { tcp, tls: true }],
        state,
        async {
            let _ = stopped.await;
        },
    ));
    (addr, stop, task)
}

#[tokio::test]
async fn h2_by_alpn_serves_health() {
    let (addr, stop, task) = start().await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client_tls(&[b"h2", b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(b"h2".as_slice()));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("https://localhost/health")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["status"], "healthy");
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http1_over_tls_serves_health() {
    let (addr, stop, task) = start().await;
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = client_tls(&[b"http/1.1"])
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/healthz")
        .header("host", "localhost")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_tls_listener_without_certificate_is_refused() {
    let state = dockerproxy_server::build_state(config(&[], None)).unwrap();
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = run_listeners(vec![Listener { tcp, tls: true }], state, async {})
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}

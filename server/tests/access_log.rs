//! The access log line (SECURITY.md §2.17): one line per request with method, host, path,
//! status, bytes and `X-Cache`; never a query string, `Authorization`, cookie or token.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::{Server, proxy_config, raw_request, upstream};

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn access_line_has_the_facts_and_no_secrets() {
    let captured = Captured::default();
    let sink = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    // Current-thread runtime: every server task runs on this thread, under this subscriber.
    let _guard = tracing::subscriber::set_default(subscriber);

    let up = upstream(Bytes::from_static(b"{}")).await;
    let server = Server::start(proxy_config(up)).await;
    let raw = "GET /v2/team/app/manifests/v1?X-Amz-Signature=querysecret&token=qtoken HTTP/1.1\r\n\
               Host: local.example.com\r\n\
               Authorization: Bearer authsecret\r\n\
               Cookie: session=cookiesecret\r\n\
               Connection: close\r\n\r\n";
    let (reply, _) = raw_request(server.addr, raw.as_bytes()).await;
    assert_ne!(reply.status, 0);
    server.stop().await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("path=/v2/team/app/manifests/v1"))
        .unwrap_or_else(|| panic!("no access line in:\n{text}"));
    assert!(line.contains("method=GET"), "{line}");
    assert!(line.contains("host=local.example.com"), "{line}");
    assert!(line.contains(&format!("status={}", reply.status)), "{line}");
    assert!(line.contains("bytes="), "{line}");
    assert!(line.contains("x_cache="), "{line}");
    for secret in [
        "querysecret",
        "qtoken",
        "authsecret",
        "cookiesecret",
        "X-Amz-Signature",
    ] {
        assert!(
            !text.contains(secret),
            "{secret} leaked into the logs:\n{text}"
        );
    }
}

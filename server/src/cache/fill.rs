//! Single-flight fills (DESIGN.md §4): one detached task per blob reads the upstream body,
//! verifies it with the core's [`Verifier`], writes the released bytes to a temp file and
//! publishes how far it got; every client of that blob reads the growing file
//! ([`super::reader`]).
//!
//! ```text
//! upstream ─► Verifier ─ released ─► tmp file ─► progress.released ─► readers tail the file
//!    │ cut: Range: bytes=N- (same URL, ≤ MAX_RESUMES)           │ disk error: detach, readers
//!    └─ end ─► finish(): tail ─► done ─► fsync + rename + dir fsync ─► index + journal
//!                 └─ mismatch / short / overrun / upstream failure: failed, tmp deleted
//! ```
//!
//! The task is not tied to any client: a client leaving never cancels it. On a disk error the
//! writer detaches: no new reader may join, nothing is committed, and the released bytes go to
//! the attached readers through bounded channels instead (they keep receiving verified bytes).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use dockerproxy_core::exchange::UpstreamRequest;
use dockerproxy_core::reference::{Digest, Name};
use dockerproxy_core::verifier::{Verifier, VerifyError};
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::sync::{mpsc, watch};

use super::Inner;
use crate::upstream::UpstreamClient;

/// Resume attempts after the upstream connection is cut.
pub const MAX_RESUMES: u32 = 3;
/// Spill channel capacity per reader (chunks) once the writer is detached.
const SPILL_CHUNKS: usize = 16;

/// Why a fill failed; every attached reader's body ends with it.
#[derive(Clone, Debug)]
pub struct FillError {
    /// What happened.
    pub reason: Arc<str>,
    /// The verification failure, when it was one.
    pub integrity: Option<VerifyError>,
    /// This reader reports the failure in metrics (one per fill).
    pub report: bool,
}

impl core::fmt::Display for FillError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for FillError {}

impl FillError {
    fn new(reason: impl Into<Arc<str>>, integrity: Option<VerifyError>) -> Self {
        Self {
            reason: reason.into(),
            integrity,
            report: false,
        }
    }
}

/// How far a fill got.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Verified-for-release bytes (never the held-back tail before the digest matched).
    pub released: u64,
    /// Bytes readable from the temp file (stops growing when the writer detached).
    pub on_disk: u64,
    /// Digest and length confirmed: `released` is the whole blob.
    pub done: bool,
    /// The fill failed.
    pub failed: Option<FillError>,
}

/// A fill in flight.
#[derive(Debug)]
pub struct Fill {
    /// Unique id.
    pub id: u64,
    /// Registry.
    pub registry: String,
    /// Digest.
    pub digest: Digest,
    /// Repository it is fetched through.
    pub repository: Name,
    /// Upstream `Content-Length`.
    pub size: Option<u64>,
    /// The temp file (readers use positioned reads on it, so rename and unlink do not matter).
    pub file: Arc<File>,
    /// The temp file's path.
    pub tmp: PathBuf,
    progress: watch::Sender<Progress>,
    spill: Mutex<Vec<mpsc::Sender<(u64, Bytes)>>>,
    detached: AtomicBool,
}

/// A reader's view of a fill.
#[derive(Debug)]
pub struct Attachment {
    /// Progress updates.
    pub progress: watch::Receiver<Progress>,
    /// Released bytes after the writer detached, as `(offset, bytes)`.
    pub spill: mpsc::Receiver<(u64, Bytes)>,
}

impl Fill {
    /// A new fill writing `file` at `tmp`.
    pub fn new(
        id: u64,
        registry: String,
        digest: Digest,
        repository: Name,
        size: Option<u64>,
        file: File,
        tmp: PathBuf,
    ) -> Self {
        Self {
            id,
            registry,
            digest,
            repository,
            size,
            file: Arc::new(file),
            tmp,
            progress: watch::Sender::new(Progress::default()),
            spill: Mutex::new(Vec::new()),
            detached: AtomicBool::new(false),
        }
    }

    /// Attaches a reader; `None` once the writer detached (the reader could not catch up).
    pub fn attach(&self) -> Option<Attachment> {
        let mut spill = lock(&self.spill);
        if self.detached.load(Ordering::Acquire) {
            return None;
        }
        let (tx, rx) = mpsc::channel(SPILL_CHUNKS);
        spill.push(tx);
        Some(Attachment {
            progress: self.progress.subscribe(),
            spill: rx,
        })
    }

    /// The current progress.
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    fn publish(&self, f: impl FnOnce(&mut Progress)) {
        self.progress.send_modify(f);
    }

    fn fail(&self, e: FillError) {
        self.publish(|p| p.failed = Some(e));
    }

    fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Where the fill's bytes come from.
pub struct Source {
    /// The upstream body.
    pub body: Incoming,
    /// The request that produced it, for resumes.
    pub request: Option<UpstreamRequest>,
    /// The upstream client.
    pub client: UpstreamClient,
}

/// Runs a fill to its end (spawned detached by the store).
pub async fn run(inner: Arc<Inner>, fill: Arc<Fill>, source: Source) {
    let result = pump(&inner, &fill, source).await;
    match result {
        Ok(len) => {
            fill.publish(|p| {
                p.released = len;
                if !fill.is_detached() {
                    p.on_disk = len;
                }
                p.done = true;
            });
            // Readers may finish now; the commit (fsyncs) follows.
            inner.commit_fill(&fill, len).await;
        }
        Err(e) => {
            tracing::warn!(digest = %fill.digest, registry = %fill.registry, error = %e, "blob fill failed; nothing stored");
            fill.fail(e.clone());
            inner.abandon_fill(&fill, e.integrity.is_some()).await;
        }
    }
    // Closing the spill channels lets detached readers see the end.
    lock(&fill.spill).clear();
}

/// Writer state across resumes.
struct Writer {
    verifier: Option<Verifier>,
    /// Bytes released and handed on (file or spill).
    released: u64,
}

async fn pump(inner: &Arc<Inner>, fill: &Arc<Fill>, source: Source) -> Result<u64, FillError> {
    let Source {
        mut body,
        request,
        client,
    } = source;
    let idle = client.idle_timeout();
    let mut w = Writer {
        verifier: Some(Verifier::new(fill.digest.clone(), fill.size)),
        released: 0,
    };
    let mut resumes = 0;
    // Bytes of a `200` answer to a resume that repeat what was already received.
    let mut skip: u64 = 0;
    loop {
        let frame = tokio::time::timeout(idle, body.frame()).await;
        let cut = match frame {
            Ok(Some(Ok(frame))) => {
                let Ok(mut data) = frame.into_data() else {
                    continue;
                };
                if skip > 0 {
                    let n = usize::try_from(skip.min(data.len() as u64)).unwrap_or(data.len());
                    let _ = data.split_to(n);
                    skip -= n as u64;
                    if data.is_empty() {
                        continue;
                    }
                }
                let out = match w.verifier.as_mut() {
                    Some(v) => v.push(&data).map_err(|e| integrity(&e))?,
                    None => return Err(FillError::new("verifier gone", None)),
                };
                write_out(inner, fill, &mut w, out).await?;
                continue;
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => format!("upstream body failed: {e}"),
            Err(_) => "upstream idle timeout".to_owned(),
        };
        let pushed = w.verifier.as_ref().map_or(0, Verifier::len);
        if fill.size == Some(pushed) {
            // Everything arrived; only the connection's end was lost.
            break;
        }
        let Some(req) = request.as_ref() else {
            return Err(FillError::new(cut, None));
        };
        loop {
            resumes += 1;
            if resumes > MAX_RESUMES {
                return Err(FillError::new(cut, None));
            }
            tracing::info!(digest = %fill.digest, from = pushed, attempt = resumes, reason = %cut, "resuming blob fill");
            tokio::time::sleep(Duration::from_millis(100 * u64::from(resumes))).await;
            if let Some((b, s)) = resume(&client, req, pushed).await {
                body = b;
                skip = s;
                break;
            }
        }
    }
    let tail = match w.verifier.take() {
        Some(v) => v.finish().map_err(|e| integrity(&e))?,
        None => return Err(FillError::new("verifier gone", None)),
    };
    write_out(inner, fill, &mut w, tail).await?;
    Ok(w.released)
}

fn integrity(e: &VerifyError) -> FillError {
    FillError::new(format!("integrity check failed: {e}"), Some(e.clone()))
}

/// Asks for the rest from byte `from` on the same URL. A `206` must start at `from`; a `200`
/// restarts the body (the first `from` bytes are skipped).
async fn resume(
    client: &UpstreamClient,
    req: &UpstreamRequest,
    from: u64,
) -> Option<(Incoming, u64)> {
    let mut req = req.clone();
    req.headers.remove(header::IF_RANGE);
    req.headers.remove(header::IF_NONE_MATCH);
    let range = HeaderValue::from_str(&format!("bytes={from}-")).ok()?;
    req.headers.insert(header::RANGE, range);
    let resp = client.send(req, &mut None).await.ok()?;
    match resp.status() {
        StatusCode::PARTIAL_CONTENT => {
            let start = resp
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.trim().parse::<u64>().ok());
            (start == Some(from)).then(|| (resp.into_body(), 0))
        }
        StatusCode::OK => Some((resp.into_body(), from)),
        _ => None,
    }
}

/// Hands released bytes on: to the temp file (then publishes them), or after a disk error to
/// the attached readers' spill channels.
async fn write_out(
    inner: &Arc<Inner>,
    fill: &Arc<Fill>,
    w: &mut Writer,
    data: Bytes,
) -> Result<(), FillError> {
    if data.is_empty() {
        return Ok(());
    }
    let offset = w.released;
    let len = data.len() as u64;
    if !fill.is_detached() {
        let file = fill.file.clone();
        let chunk = data.clone();
        let injected = inner
            .settings
            .fail_writes_after
            .is_some_and(|n| offset + len > n);
        let r = tokio::task::spawn_blocking(move || {
            if injected {
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            file.write_all_at(&chunk, offset)
        })
        .await;
        match r {
            Ok(Ok(())) => {
                w.released += len;
                let released = w.released;
                fill.publish(|p| {
                    p.released = released;
                    p.on_disk = released;
                });
                return Ok(());
            }
            Ok(Err(e)) => {
                inner.disk_error("fill write", &e);
            }
            Err(e) => {
                inner.disk_error("fill write", &std::io::Error::other(e.to_string()));
            }
        }
        // Detach: no new reader joins; attached ones continue from the spill channels.
        {
            let _spill = lock(&fill.spill);
            fill.detached.store(true, Ordering::Release);
        }
        inner.detach_fill(fill);
    }
    let senders: Vec<_> = lock(&fill.spill).clone();
    let mut alive = 0;
    for tx in &senders {
        if tx.send((offset, data.clone())).await.is_ok() {
            alive += 1;
        }
    }
    lock(&fill.spill).retain(|tx| !tx.is_closed());
    if alive == 0 {
        return Err(FillError::new(
            "cache write failed and no reader is left",
            None,
        ));
    }
    w.released += len;
    let released = w.released;
    fill.publish(|p| p.released = released);
    Ok(())
}

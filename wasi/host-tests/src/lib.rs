//! An embedded wasmtime host that serves the dockerproxy WASI component on `127.0.0.1`, the way
//! `wasmtime serve -S cli=y` does: hyper accepts HTTP/1.1 connections, and every request gets a
//! fresh [`Store`] and a fresh instance of the pre-instantiated component (so nothing the
//! component caches survives between requests, the hardest case for its correctness).
//!
//! The host also does what the component's README asks of a production host: it restricts
//! outbound requests to an allowlist of authorities (the component cannot see dialled addresses),
//! refusing the rest with `HTTP-request-denied`. Every outbound request, allowed or not, is
//! recorded with the `request-options` the component passed, so tests can check the deadlines.
//!
//! ```text
//!  client ──► hyper (127.0.0.1:PORT) ──► Store + instance ──► incoming-handler.handle
//!                                              │ outgoing-handler.handle
//!                                              ▼
//!                                   OutboundPolicy::send_request ──allowlist──► upstream
//! ```
//!
//! Only for tests: no TLS on the listener, no limits on instances.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::oneshot;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

/// The wasmtime version this host embeds (the README names it as the tested version).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// A failure to build, compile or serve the component.
#[derive(Debug)]
pub struct HostError(pub String);

impl core::fmt::Display for HostError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HostError {}

fn err(context: &str, e: impl core::fmt::Display) -> HostError {
    HostError(format!("{context}: {e}"))
}

/// True when the `wasm32-wasip2` standard library is installed for the current `rustc` (or a
/// prebuilt component is named by [`COMPONENT_VAR`]), so the component can be built.
pub fn can_build_component() -> bool {
    if std::env::var_os(COMPONENT_VAR).is_some() {
        return true;
    }
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    std::process::Command::new(rustc)
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .is_some_and(|sysroot| sysroot.join("lib/rustlib/wasm32-wasip2").is_dir())
}

/// When set, the path of a component to serve instead of building one.
pub const COMPONENT_VAR: &str = "DOCKERPROXY_WASI_COMPONENT";

/// Builds the component with `cargo build -p dockerproxy-wasi --target wasm32-wasip2 --release`
/// in this workspace (same `CARGO_TARGET_DIR` as the caller, so the build is incremental) and
/// returns the path of `dockerproxy_wasi.wasm` and how long the build took. Built once per
/// process; with [`COMPONENT_VAR`] set, that file is used and nothing is built.
///
/// # Errors
/// When cargo cannot be run or the build fails (its stderr is in the message).
pub fn build_component() -> Result<(PathBuf, Duration), HostError> {
    static BUILT: OnceLock<Result<(PathBuf, Duration), String>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(path) = std::env::var_os(COMPONENT_VAR) {
                return Ok((PathBuf::from(path), Duration::ZERO));
            }
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let target_dir = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| workspace.join("target"), PathBuf::from);
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let started = Instant::now();
            let out = std::process::Command::new(cargo)
                .args([
                    "build",
                    "-p",
                    "dockerproxy-wasi",
                    "--target",
                    "wasm32-wasip2",
                    "--release",
                ])
                .env("CARGO_TARGET_DIR", &target_dir)
                .current_dir(&workspace)
                .output()
                .map_err(|e| format!("run cargo: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "cargo build of the component failed:\n{}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let path = target_dir.join("wasm32-wasip2/release/dockerproxy_wasi.wasm");
            Ok((path, started.elapsed()))
        })
        .clone()
        .map_err(HostError)
}

/// The engine and the compiled component, shared by every host of the process (compiling is the
/// slow part of starting a host).
struct Compiled {
    engine: Engine,
    component: Component,
    path: PathBuf,
    took: Duration,
}

fn compiled(path: &Path) -> Result<&'static Compiled, HostError> {
    static COMPILED: OnceLock<Result<Compiled, String>> = OnceLock::new();
    let c = COMPILED
        .get_or_init(|| {
            let started = Instant::now();
            let mut config = wasmtime::Config::new();
            config.wasm_component_model(true);
            // Tests build wasmtime without optimisation; an unoptimising Cranelift compiles the
            // component several times faster, and the component's speed does not matter here.
            config.cranelift_opt_level(wasmtime::OptLevel::None);
            let engine = Engine::new(&config).map_err(|e| format!("engine: {e}"))?;
            let component = Component::from_file(&engine, path)
                .map_err(|e| format!("compile {}: {e}", path.display()))?;
            Ok(Compiled {
                engine,
                component,
                path: path.to_path_buf(),
                took: started.elapsed(),
            })
        })
        .as_ref()
        .map_err(|e| HostError(e.clone()))?;
    if c.path != path {
        return Err(HostError(format!(
            "one component per process: {} was compiled first",
            c.path.display()
        )));
    }
    Ok(c)
}

/// How long compiling the component took in this process (after the first [`WasiHost::start`]).
pub fn compile_time() -> Option<Duration> {
    build_component()
        .ok()
        .and_then(|(p, _)| compiled(&p).ok())
        .map(|c| c.took)
}

/// One outbound request the component asked the host to send.
#[derive(Clone, Debug)]
pub struct OutboundRecord {
    /// Method.
    pub method: String,
    /// Absolute URI.
    pub uri: String,
    /// `host:port`, the port explicit.
    pub authority: String,
    /// The deadlines the component passed as `request-options`.
    pub options: Option<RequestOptions>,
    /// Whether the allowlist let it through.
    pub allowed: bool,
}

/// The host's outbound policy: an allowlist of `host:port` authorities, and a log.
#[derive(Clone)]
struct OutboundPolicy {
    allowed: Arc<Vec<String>>,
    log: Arc<Mutex<Vec<OutboundRecord>>>,
}

fn explicit_authority(uri: &http::Uri) -> String {
    let Some(a) = uri.authority() else {
        return String::new();
    };
    let host = a.host().to_ascii_lowercase();
    let port = a
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("https") {
            443
        } else {
            80
        });
    format!("{host}:{port}")
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
)>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let authority = explicit_authority(request.uri());
        let allowed = self
            .allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(&authority));
        if let Ok(mut log) = self.log.lock() {
            log.push(OutboundRecord {
                method: request.method().to_string(),
                uri: request.uri().to_string(),
                authority,
                options,
                allowed,
            });
        }
        Box::new(async move {
            if !allowed {
                return Err(wasmtime_wasi_http::Error::HttpRequestDenied);
            }
            let (resp, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                resp.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

/// The per-request store data.
struct Instance {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    hooks: OutboundPolicy,
}

impl WasiView for Instance {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for Instance {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.hooks,
        }
    }
}

/// What a host serves and allows.
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// Environment variables of every instance (`CUSTOM_DOMAIN`, `DOCKERPROXY_CONFIG`, ...).
    pub env: Vec<(String, String)>,
    /// Outbound `host:port` authorities the component may reach; everything else is denied.
    pub allowed_outbound: Vec<String>,
}

struct Shared {
    pre: ProxyPre<Instance>,
    env: Vec<(String, String)>,
    policy: OutboundPolicy,
}

/// A running host; dropping it stops serving.
pub struct WasiHost {
    addr: SocketAddr,
    log: Arc<Mutex<Vec<OutboundRecord>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl core::fmt::Debug for WasiHost {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WasiHost")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl WasiHost {
    /// Builds (once) and compiles (once) the component, then serves it on `127.0.0.1:0` from
    /// its own thread and runtime.
    ///
    /// # Errors
    /// Build, compile, link or bind failures.
    pub fn start(options: HostOptions) -> Result<Self, HostError> {
        let (path, _) = build_component()?;
        let compiled = compiled(&path)?;
        let mut linker = Linker::<Instance>::new(&compiled.engine);
        // `-S cli=y`: the component reads its configuration through wasi:cli/environment.
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| err("link wasi", e))?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
            .map_err(|e| err("link wasi:http", e))?;
        let pre = linker
            .instantiate_pre(&compiled.component)
            .map_err(|e| err("instantiate_pre", e))?;
        let pre = ProxyPre::new(pre).map_err(|e| err("ProxyPre", e))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let policy = OutboundPolicy {
            allowed: Arc::new(options.allowed_outbound),
            log: log.clone(),
        };
        let shared = Arc::new(Shared {
            pre,
            env: options.env,
            policy,
        });

        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| err("bind", e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| err("nonblocking", e))?;
        let addr = listener.local_addr().map_err(|e| err("local_addr", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| err("runtime", e))?;
        let (tx, rx) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("wasi-host".into())
            .spawn(move || runtime.block_on(serve(listener, shared, rx)))
            .map_err(|e| err("spawn", e))?;
        Ok(Self {
            addr,
            log,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }

    /// `127.0.0.1:PORT`.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The outbound requests so far.
    pub fn outbound(&self) -> Vec<OutboundRecord> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for WasiHost {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) {
    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
        return;
    };
    loop {
        let (conn, _) = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { handle(shared, req).await }
            });
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}

/// One request: a fresh store and instance, `incoming-handler.handle`, and the response the
/// component sets (its body keeps streaming from the instance's task).
async fn handle(
    shared: Arc<Shared>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<hyper::Response<HyperOutgoingBody>, HostError> {
    let mut wasi = WasiCtx::builder();
    wasi.envs(&shared.env).inherit_stderr();
    let mut store = Store::new(
        shared.pre.engine(),
        Instance {
            wasi: wasi.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            hooks: shared.policy.clone(),
        },
    );
    let (sender, receiver) = oneshot::channel();
    let req = store
        .data_mut()
        .http()
        .new_incoming_request(Scheme::Http, req)
        .map_err(|e| err("request", e))?;
    let out = store
        .data_mut()
        .http()
        .new_response_outparam(sender)
        .map_err(|e| err("outparam", e))?;
    let pre = shared.pre.clone();
    let task = tokio::spawn(async move {
        let proxy = pre.instantiate_async(&mut store).await?;
        proxy
            .wasi_http_incoming_handler()
            .call_handle(&mut store, req, out)
            .await
    });
    match receiver.await {
        Ok(Ok(resp)) => Ok(resp),
        Ok(Err(code)) => Err(HostError(format!("component answered with error {code:?}"))),
        Err(_) => Err(match task.await {
            Ok(Ok(())) => HostError("component never set a response".into()),
            Ok(Err(e)) => err("component trapped", e),
            Err(e) => err("task", e),
        }),
    }
}

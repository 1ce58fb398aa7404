//! dockerproxy as a `wasi:http/proxy` component (DESIGN.md §6).
//!
//! The component exports `wasi:http/incoming-handler` and drives the core's
//! [`Exchange`](dockerproxy_core::Exchange) for every request, performing its actions with
//! `wasi:http/outgoing-handler`. Blob bodies stream from the upstream's incoming-body to the
//! client's outgoing-body in chunks, through the core's
//! [`Verifier`](dockerproxy_core::verifier::Verifier) when a digest is known; on a mismatch the
//! client's body is dropped unfinished, which the host turns into an aborted response.
//!
//! ```text
//!  incoming-handler.handle ──► RequestHead ──► Exchange ──poll_action──┐
//!        ▲                                                             │
//!        │   SendUpstream ─► outgoing-handler.handle (timeouts from Config.limits)
//!        │   ReadUpstreamBody / ReadClientBody ─► bounded reads
//!        │   TokenLookup / TokenStore ─► per-instance TokenCache
//!        │   CacheLookup ─► Miss (no store), CacheStore & co. ─► ignored
//!        └── Respond / Local ─► response-outparam.set, then stream or write the body
//! ```
//!
//! The modules compiled for every target ([`settings`], [`outbound`], [`local`])
//! hold the component's own decisions and are unit-tested on the host. The WASI glue (`component`,
//! `wasi_io`) only exists for `target_arch = "wasm32"`, so `cargo build --workspace` on the host
//! links a small library and pulls in no WASI bindings.
//!
//! What the component does not do: it cannot see the address the host dials (no post-DNS address
//! check, SECURITY.md §1; the host must restrict outbound hosts), it keeps no blob or manifest
//! cache, and its token cache lives only as long as the instance.

pub mod local;
pub mod outbound;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod component;
#[cfg(target_arch = "wasm32")]
mod wasi_io;

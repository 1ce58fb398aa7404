//! `dockerproxy-core`: the sans-IO policy engine of dockerproxy.
//!
//! Everything a registry mirror *decides* lives here: which upstream a request goes to
//! ([`route`]), whether a request is valid OCI ([`request`], [`reference`]), how auth challenges
//! are rewritten ([`challenge`]) and tokens requested and cached ([`scope`], [`token`]), which
//! redirects are followed and with which headers ([`redirect`]), what may be cached and for how
//! long ([`cache_policy`]), and whether streamed bytes match their digest ([`verifier`]).
//! [`exchange::Exchange`] sequences all of it for one client request.
//!
//! The crate does no I/O: no sockets, files, clock or environment. Time comes in as a
//! [`Timestamp`]; configuration comes in as values. The server, the C ABI and the WASI component
//! are the wrappers that perform the actions this crate returns.
//!
//! # The run loop
//!
//! ```text
//! let mut ex = Exchange::new(&config, request_head, now);
//! loop {
//!     match ex.poll_action(now) {
//!         Action::SendUpstream(req)        => { /* send; then ex.handle_upstream_head(..) or handle_upstream_error(..) */ }
//!         Action::ReadUpstreamBody { limit } => { /* read ≤ limit bytes; then ex.handle_upstream_body(..) */ }
//!         Action::CacheLookup(key)         => { /* then ex.handle_cache_result(..) */ }
//!         Action::Respond(resp)            => { /* send the head, then the body as resp.body says */ }
//!         Action::Local(endpoint)          => { /* render /health, /metrics, ... */ }
//!         Action::Wait(deadline)           => { /* sleep until deadline, then ex.handle_timeout(now) */ }
//!         Action::Done                     => break,
//!     }
//! }
//! ```

pub mod cache_policy;
pub mod challenge;
pub mod config;
pub mod duration;
pub mod exchange;
pub mod headers;
pub mod login;
pub mod oci_error;
pub mod proxy_token;
pub mod range;
pub mod redirect;
pub mod reference;
pub mod request;
pub mod route;
pub mod scope;
pub mod time;
pub mod token;
pub mod verifier;

pub use config::Config;
pub use exchange::{Action, Exchange};
pub use time::Timestamp;

/// The version of this crate, reported by `/health` and the C ABI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

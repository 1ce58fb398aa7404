//! libdockerproxy: the C ABI of the dockerproxy core (DESIGN.md §5), in the style of
//! rustls-ffi.
//!
//! - Every function has the `dp_` prefix; handles are opaque (`dp_proxy`, `dp_exchange`,
//!   `dp_verifier`, `dp_route_result`, `dp_action`).
//! - Every fallible function returns a `dp_result` (`DP_OK` = 0) and writes its outputs only on
//!   success; `dp_result_message` gives the text of a code.
//! - Every entry point NULL-checks its pointers and catches panics (`DP_PANIC`); a panic inside
//!   an exchange poisons it (`DP_POISONED` afterwards).
//! - Ownership and lifetime are written on every function: `*_new` results are owned by the
//!   caller and released by the matching `*_free`; strings handed out (`dp_str`) are borrowed
//!   from a handle and live as long as the function's doc says; inputs are copied.
//!
//! The run loop in C:
//!
//! ```c
//! dp_exchange *ex; dp_exchange_new(proxy, "GET", 3, target, len, hdrs, n, NULL, 0, false, now, &ex);
//! for (;;) {
//!     const dp_action *a; dp_exchange_poll(ex, now, &a);
//!     switch (dp_action_get_kind(a)) {
//!     case DP_ACTION_SEND_UPSTREAM: /* send; dp_exchange_upstream_head(...) */ break;
//!     case DP_ACTION_READ_UPSTREAM_BODY: /* read; dp_exchange_upstream_body(...) */ break;
//!     /* ... every kind: see dp_action_get_kind ... */
//!     case DP_ACTION_DONE: dp_exchange_free(ex); return;
//!     }
//! }
//! ```

pub mod action;
pub mod error;
pub mod exchange;
pub mod headers;
pub(crate) mod panic;
pub mod proxy;
pub mod route;
pub mod verifier;
pub mod views;

/// The library version as a static NUL-terminated string. Never free it.
#[unsafe(no_mangle)]
pub extern "C" fn dp_version() -> *const core::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

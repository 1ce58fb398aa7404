//! libdockerproxy: the C ABI of the dockerproxy core (issue 5; skeleton).

/// The library version as a NUL-terminated string.
#[unsafe(no_mangle)]
pub extern "C" fn dp_version() -> *const core::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

//! Drift test: regenerates `include/dockerproxy.h` with cbindgen and fails on any difference
//! from the checked-in header. `UPDATE_HEADER=1 cargo test -p dockerproxy-ffi --test header`
//! rewrites it.

use std::path::PathBuf;

fn generate() -> String {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("ffi/cbindgen.toml parses");
    let mut out = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header")
        .write(&mut out);
    String::from_utf8(out).expect("the header is UTF-8")
}

#[test]
fn checked_in_header_matches_the_source() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../include/dockerproxy.h");
    let fresh = generate();
    assert!(
        fresh.contains("dp_exchange_poll"),
        "the generated header lacks the exchange API"
    );
    if std::env::var_os("UPDATE_HEADER").is_some() {
        std::fs::write(&path, &fresh).expect("write include/dockerproxy.h");
        return;
    }
    let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
    if checked_in != fresh {
        let line = checked_in
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .map_or_else(
                || "(length differs)".to_owned(),
                |i| format!("line {}", i + 1),
            );
        panic!(
            "include/dockerproxy.h is out of date with ffi/src (first difference at {line}).\n\
             Regenerate it with: UPDATE_HEADER=1 cargo test -p dockerproxy-ffi --test header"
        );
    }
}

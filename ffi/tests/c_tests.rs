//! Compiles the C tests of `tests/c/` with `gcc -std=c11 -Wall -Wextra -Werror -pedantic`,
//! links them against the static and the shared library that `cargo test` just built (next to
//! this test executable, in `target/<profile>/deps/`), and runs them plainly, under
//! AddressSanitizer + UBSan, and under valgrind (zero errors, zero leaks of any kind).
//!
//! gcc or valgrind missing: the test fails when `CI` is set, else it is skipped with a reason.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The C test programs (`tests/c/<name>.c`).
const PROGRAMS: [&str; 3] = ["test_api", "test_verifier", "test_pull"];

/// What Rust's std needs from the system when linking the staticlib on Linux.
const NATIVE_LIBS: [&str; 7] = [
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

/// How a program is linked.
#[derive(Clone, Copy, Debug)]
enum Link {
    Static,
    Shared,
    StaticSanitized,
}

fn deps_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .expect("the test executable has a directory")
        .to_owned()
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True when `tool` runs; otherwise fails under CI or reports a skip.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required under CI (scripts/install-test-deps.sh installs it)"
        );
        eprintln!("SKIP: {tool} is not installed (scripts/install-test-deps.sh installs it)");
    }
    ok
}

/// Compiles `program` with the given linkage; returns the executable.
fn build(program: &str, link: Link) -> PathBuf {
    let deps = deps_dir();
    let out_dir = deps.join("../c-tests");
    std::fs::create_dir_all(&out_dir).expect("create the C test output directory");
    let src = manifest_dir().join("tests/c").join(format!("{program}.c"));
    let exe = out_dir.join(format!("{program}-{link:?}").to_lowercase());
    let mut cmd = Command::new("gcc");
    cmd.args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-g"])
        .arg("-I")
        .arg(manifest_dir().join("../include"))
        .arg(&src)
        .arg("-o")
        .arg(&exe);
    let staticlib = deps.join("libdockerproxy.a");
    match link {
        Link::Static => {
            cmd.arg(&staticlib).args(NATIVE_LIBS);
        }
        Link::StaticSanitized => {
            cmd.args(["-fsanitize=address,undefined", "-fno-omit-frame-pointer"])
                .arg(&staticlib)
                .args(NATIVE_LIBS);
        }
        Link::Shared => {
            // Linked by path: the cdylib has no SONAME, so the executable records this exact
            // file and no LD_LIBRARY_PATH (cargo sets one) can substitute another build.
            let shared = deps.join("libdockerproxy.so");
            assert!(
                shared.exists(),
                "the cdylib was not built at {}",
                shared.display()
            );
            cmd.arg(&shared);
        }
    }
    assert!(
        staticlib.exists(),
        "the staticlib was not built at {}",
        staticlib.display()
    );
    let out = cmd.output().expect("run gcc");
    assert!(
        out.status.success(),
        "gcc failed for {program} ({link:?}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

/// Runs a command; fails with its output unless it exits 0 and prints `<program>: ok`.
fn run(program: &str, what: &str, cmd: &mut Command) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {program} ({what}): {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(&format!("{program}: ok")),
        "{program} ({what}) failed with {}:\nstdout:\n{stdout}\nstderr:\n{stderr}",
        out.status
    );
}

fn exe_cmd(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_remove("LD_LIBRARY_PATH");
    cmd
}

#[test]
fn c_tests_pass_linked_static_and_shared() {
    if !have("gcc") {
        return;
    }
    for program in PROGRAMS {
        for link in [Link::Static, Link::Shared] {
            let exe = build(program, link);
            run(program, &format!("{link:?}"), &mut exe_cmd(&exe));
        }
    }
}

#[test]
fn c_tests_pass_under_address_and_undefined_sanitizers() {
    if !have("gcc") {
        return;
    }
    for program in PROGRAMS {
        let exe = build(program, Link::StaticSanitized);
        let mut cmd = exe_cmd(&exe);
        cmd.env(
            "ASAN_OPTIONS",
            "detect_leaks=1:abort_on_error=0:exitcode=23",
        )
        .env(
            "UBSAN_OPTIONS",
            "halt_on_error=1:print_stacktrace=1:exitcode=24",
        );
        run(program, "ASan+UBSan", &mut cmd);
    }
}

#[test]
fn c_tests_pass_under_valgrind_without_errors_or_leaks() {
    if !have("gcc") || !have("valgrind") {
        return;
    }
    for program in PROGRAMS {
        for link in [Link::Static, Link::Shared] {
            let exe = build(program, link);
            let mut cmd = Command::new("valgrind");
            cmd.env_remove("LD_LIBRARY_PATH")
                .args([
                    "--error-exitcode=1",
                    "--leak-check=full",
                    "--show-leak-kinds=all",
                    "--errors-for-leak-kinds=all",
                    "-q",
                ])
                .arg(&exe);
            run(program, &format!("valgrind, {link:?}"), &mut cmd);
        }
    }
}

//! Checks that an external tool (`docker-registry`, `skopeo`, …) is installed.
//!
//! Under CI (env `CI` set) a missing tool is a failure; on a developer machine the test is skipped
//! with a printed reason, so `cargo test` stays green where the tools were never installed.

use std::path::{Path, PathBuf};

/// Finds `name` (a bare program name, or a path) like a shell would: an absolute or relative path
/// is taken as is, a bare name is looked up in `PATH`. Returns the executable's path.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        let path = Path::new(name);
        return is_executable(path).then(|| path.to_path_buf());
    }
    let path_var = std::env::var_os("PATH")?;
    std::env::split_paths(&path_var)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// Returns `true` when `name` is installed. When it is missing: panics if env `CI` is set
/// ("missing tool X: run scripts/install-test-deps.sh"), otherwise prints a skip reason and
/// returns `false`; the calling test should then return early.
///
/// # Panics
/// When the tool is missing and `CI` is set: CI must run every test.
pub fn require_tool(name: &str) -> bool {
    if find_tool(name).is_some() {
        return true;
    }
    let message = format!("missing tool {name}: run scripts/install-test-deps.sh");
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!("{message}");
    }
    eprintln!("SKIPPED: {message}");
    false
}

/// Returns `true` when every tool in `names` is installed (see [`require_tool`]).
pub fn require_tools(names: &[&str]) -> bool {
    names.iter().all(|name| require_tool(name))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_sh_and_not_a_made_up_tool() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("/bin/sh").is_some());
        assert!(find_tool("no-such-tool-dockerproxy-xyz").is_none());
        assert!(require_tool("sh"));
    }
}

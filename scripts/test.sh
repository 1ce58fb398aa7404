#!/usr/bin/env bash
# The project's one test command (README "Test"): installs what the tests need, then runs the
# format, lint, sans-IO and wasm checks and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/dockerproxy-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }

step "installing test dependencies"
bash scripts/install-test-deps.sh
bash scripts/install-garage.sh
if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
fi
for c in clippy rustfmt; do
    rustup component list --installed | grep -q "^$c" || rustup component add "$c"
done

step "cargo fmt --check"
cargo fmt --all --check

step "cargo clippy (deny warnings)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "the core is sans-IO: no runtime or socket crate in its normal dependencies"
forbidden=$(cargo tree -p dockerproxy-core -e normal --prefix none --locked | awk '{print $1}' | grep -xE 'tokio|hyper|mio|socket2|reqwest|hyper-util' || true)
if [ -n "$forbidden" ]; then
    echo "dockerproxy-core depends on: $forbidden" >&2
    exit 1
fi
echo "ok: no tokio, hyper, mio, socket2 or reqwest under dockerproxy-core"

step "the core builds for wasm32-wasip2"
cargo build -p dockerproxy-core --target wasm32-wasip2 --locked

step "the WASI component builds for wasm32-wasip2 (release) and passes clippy"
cargo build -p dockerproxy-wasi --target wasm32-wasip2 --release --locked
cargo clippy -p dockerproxy-wasi --target wasm32-wasip2 --release --locked -- -D warnings

step "tests"
# The process-level tests (kill -9, restart) run the built binary.
cargo build -p dockerproxy-server --bin dockerproxy --locked
# Every test binary runs even after a failure, so one red run shows every failing test.
cargo test --workspace --locked --no-fail-fast

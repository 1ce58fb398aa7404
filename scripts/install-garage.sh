#!/usr/bin/env bash
# Installs Garage (a real S3-compatible, distributed object store) for the shared-store tests
# (issue 9, tests/src/garage.rs). Garage is not packaged by Debian; it is built from crates.io,
# pinned, with its own lock file, into a directory outside the clone, so later runs on the same
# machine find it (or rebuild incrementally from the kept target directory). A cold build takes
# 10-18 minutes on two cores; a warm check is instant.
set -euo pipefail

VERSION=2.5.0
ROOT="${DOCKERPROXY_TOOLS:-/var/tmp/dockerproxy-tools}"
BIN="$ROOT/bin/garage"

if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "cargo:$VERSION"; then
    echo "install-garage: garage $VERSION already installed at $BIN"
    exit 0
fi

echo "install-garage: building garage $VERSION from crates.io (a cold build takes a while)"
start=$(date +%s)
cargo install garage --version "$VERSION" --locked --root "$ROOT" \
    --target-dir "$ROOT/target" --no-default-features --features bundled-libs,sqlite
echo "install-garage: done in $(( $(date +%s) - start )) s"

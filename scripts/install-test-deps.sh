#!/usr/bin/env bash
# Installs the Debian packages the end-to-end tests need (TESTBED.md §0). Idempotent and fast
# when everything is already installed: `dpkg -s` is checked first and apt is only touched for
# what is missing. Installing starts no daemon (policy-rc.d); tests start what they need.
set -euo pipefail

# Real clients of tests/tests/clients.rs: podman, containerd + ctr, dockerd (docker.io; it pulls
# in iptables and runc). They run as root on the vfs driver, so neither uidmap nor fuse-overlayfs
# is needed. `unshare` and `mount` (util-linux) are essential packages.
PACKAGES=(docker-registry skopeo apache2-utils openssl curl jq nginx-light wrk
    podman containerd docker.io)
# libdockerproxy's C tests (ffi/tests/c_tests.rs) and the Nginx module (nginx/, tests/tests/nginx.rs):
# gcc + make, valgrind, and Debian's Nginx sources and headers (nginx-dev pulls in pcre2, zlib, ssl).
PACKAGES+=(gcc make valgrind nginx-dev)
# chattr (read-only cache tests) and unshare/mount are in essential packages; listed for clarity.
PACKAGES+=(e2fsprogs util-linux)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg -s "$pkg" >/dev/null 2>&1; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-test-deps: all ${#PACKAGES[@]} packages already installed"
    exit 0
fi

echo "install-test-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

# Update the package lists only when they are missing or older than a day, or when a first
# install attempt fails (stale lists).
lists=/var/lib/apt/lists
if [ -z "$(find "$lists" -maxdepth 1 -name '*_Packages' -mmin -1440 2>/dev/null | head -n1)" ]; then
    $SUDO apt-get update -qq
fi
if ! $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
echo "install-test-deps: done"

#!/usr/bin/env bash
# Builds ngx_http_dockerproxy_module.so against Debian's Nginx (package nginx-dev), the way
# Debian's dh_nginx does: configure the packaged source tree with the packaged flags
# (--with-compat), add this directory as a dynamic module, `make modules`.
#
#   nginx/build.sh BUILD_DIR [LIBDOCKERPROXY_A] [INCLUDE_DIR]
#
# LIBDOCKERPROXY_A defaults to target/release/libdockerproxy.a (`make -C ffi build`). The
# module is written to BUILD_DIR/objs/ngx_http_dockerproxy_module.so. The packaged source tree
# is copied into BUILD_DIR first, so nothing under /usr/share/nginx/src is written.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
build=${1:?usage: nginx/build.sh BUILD_DIR [LIBDOCKERPROXY_A] [INCLUDE_DIR]}
lib=${2:-$here/../target/release/libdockerproxy.a}
inc=${3:-$here/../include}
src=/usr/share/nginx/src

if [ ! -x "$src/configure" ]; then
    echo "nginx/build.sh: $src/configure is missing: apt-get install nginx-dev" >&2
    exit 2
fi
[ -f "$lib" ] || { echo "nginx/build.sh: $lib is missing" >&2; exit 2; }

mkdir -p "$build"
build=$(cd "$build" && pwd)
rm -rf "$build/src-tree"
cp -r "$src" "$build/src-tree"
cd "$build/src-tree"
# shellcheck disable=SC1091
. ./conf_flags
DOCKERPROXY_LIB="$lib" DOCKERPROXY_INCLUDE="$inc" ./configure \
    --with-cc-opt="-g -O2 -fPIC -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers" \
    --with-ld-opt="-fPIC -Wl,--gc-sections" \
    "${NGX_CONF_FLAGS[@]}" \
    --add-dynamic-module="$here" \
    --builddir="$build/objs" >"$build/configure.log" 2>&1 || {
    tail -n 30 "$build/configure.log" >&2
    exit 1
}
make -f "$build/objs/Makefile" -C "$build/src-tree" modules >"$build/make.log" 2>&1 || {
    tail -n 60 "$build/make.log" >&2
    exit 1
}
echo "$build/objs/ngx_http_dockerproxy_module.so"

# syntax=docker/dockerfile:1
# dockerproxy: a self-hosted Docker/OCI registry mirror.
#
#   docker build -t dockerproxy .
#   docker run -p 8080:8080 -e CUSTOM_DOMAIN=example.com -v dockerproxy-cache:/cache dockerproxy

# ---- build ---------------------------------------------------------------------------------
FROM rust:slim-bookworm AS build
WORKDIR /src
# rustls uses the ring provider: a C compiler is all ring needs (rust:slim has gcc).
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p dockerproxy-server \
 && install -Dm755 target/release/dockerproxy /out/dockerproxy

# ---- run -----------------------------------------------------------------------------------
FROM debian:bookworm-slim
# CA roots are compiled in (webpki roots); ca-certificates serves `ca_bundle` users and tools.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 dockerproxy \
 && useradd --system --uid 10001 --gid dockerproxy --home-dir /nonexistent --shell /usr/sbin/nologin dockerproxy \
 && mkdir -p /cache \
 && chown dockerproxy:dockerproxy /cache
COPY --from=build /out/dockerproxy /usr/local/bin/dockerproxy
ENV PORT=8080 \
    CACHE_DIR=/cache
VOLUME ["/cache"]
EXPOSE 8080
USER 10001:10001
# Exec form: no shell in the health check; it reads PORT like the server does.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/dockerproxy", "healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/dockerproxy"]

# syntax=docker/dockerfile:1
# The MKWW MCP image: `docker build -t mkww-mcp .` (docs/operations.md, "Deploying").
#
# Three stages: cargo-chef turns the workspace's manifests into a recipe, the dependencies are
# built from the recipe alone (a layer that stays cached until Cargo.toml or Cargo.lock
# change), then the workspace itself; the final image is Debian slim with the binary, a
# non-root user and the data directory as a volume.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS chef
RUN cargo install --locked cargo-chef@0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The dependency layer: rebuilt only when the recipe (manifests, lock file) changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin mkww-mcp
COPY . .
RUN cargo build --release --locked --bin mkww-mcp \
    && install -D -m 0755 target/release/mkww-mcp /out/mkww-mcp \
    && strip /out/mkww-mcp

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: outgoing HTTPS (webhooks, Discord, VRChat, VPM listings); tini: reaps the
# processes VCC builds leave and forwards SIGTERM, so the graceful drain runs.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid mcp --home-dir /data --shell /usr/sbin/nologin mcp \
    && mkdir -p /data \
    && chown mcp:mcp /data
COPY --from=builder /out/mkww-mcp /usr/local/bin/mkww-mcp

# The binary listens on 127.0.0.1:8080 by default; in a container it must take connections
# from outside. Data (the SQLite file of the embedded mode, generated keys) lives in /data.
ENV MCP_LISTEN=0.0.0.0:8080 \
    MCP_DATA_DIR=/data \
    MCP_LOG_FORMAT=json
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8080
USER 10001:10001

# /healthz answers 200 while the process serves HTTP; no curl in the image, bash's /dev/tcp does.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/mkww-mcp", "serve"]

# syntax=docker/dockerfile:1
#
# identity-sidecar image, four stages:
#
#   chef     rust:1.95-bookworm with cargo-chef, the base of the next two.
#   planner  `cargo chef prepare` reduces the crate to recipe.json: the manifests and the
#            dependency graph, nothing of src/. The recipe changes only when Cargo.toml or
#            Cargo.lock do.
#   builder  `cargo chef cook` builds the dependencies from the recipe alone, so that layer is
#            reused across every source change; then the crate itself is built with the locked
#            dependency set. The crates.io download cache is a BuildKit cache mount.
#            aws-lc-rs builds with the image's cc (no cmake needed); SQLite is bundled; TLS is
#            rustls, so the binary links only glibc and libgcc.
#   runtime  gcr.io/distroless/cc-debian12:nonroot: glibc, libgcc, CA certificates and
#            tzdata, no shell, no package manager, user "nonroot" (65532). Chosen over
#            debian-slim because the binary needs nothing else, and every extra package is
#            attack surface and scanner noise. To debug a running pod, attach an ephemeral
#            container: kubectl debug -it POD --image=busybox --target=identity-sidecar
#
# Build arguments (none is hard-coded, so an image never claims a version it is not):
#   VERSION   the crate version        -> org.opencontainers.image.version
#   REVISION  the git commit           -> org.opencontainers.image.revision, and
#                                         IDENTITY_SIDECAR_COMMIT at compile time
#   CREATED   build time, RFC 3339     -> org.opencontainers.image.created
#   SOURCE    the repository's URL     -> org.opencontainers.image.source
#
# Build:  docker build -t identity-sidecar:0.1.0 \
#           --build-arg VERSION=0.1.0 \
#           --build-arg REVISION="$(git rev-parse HEAD)" \
#           --build-arg CREATED="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
#           --build-arg SOURCE=https://github.com/example/identity-sidecar .
# Run:    docker run --rm -p 8080:8080 -p 8081:8081 \
#           -e SIDECAR__OIDC__ISSUER=https://sso.example.com/realms/acme \
#           -e SIDECAR__OIDC__AUDIENCES='["my-app"]' \
#           -e SIDECAR__SERVER__ADMIN_LISTEN=0.0.0.0:8081 \
#           -v identity-sidecar-data:/var/lib/identity-sidecar \
#           identity-sidecar:0.1.0
#
# The built-in config (/etc/identity-sidecar/config.toml, a copy of config/default.toml)
# binds the admin port to 127.0.0.1, so health checks and Prometheus reach it only when
# server.admin_listen is set to 0.0.0.0:8081 (as above, or as the Helm chart's ConfigMap
# does). The default SQLite file is relative to the working directory
# /var/lib/identity-sidecar (owned by 65532): mount a volume there to keep it.

ARG RUST_VERSION=1.95
ARG CARGO_CHEF_VERSION=0.1.73

FROM rust:${RUST_VERSION}-bookworm AS chef
ARG CARGO_CHEF_VERSION
RUN cargo install --locked cargo-chef --version ${CARGO_CHEF_VERSION}
WORKDIR /build
# Smaller binary; the same setting for the dependency and the final build keeps the cache valid.
ENV CARGO_PROFILE_RELEASE_STRIP=symbols \
    CARGO_TERM_COLOR=never

# 1. The recipe: manifests and lock file only (.dockerignore keeps target/, .git and the chart
#    out of the context).
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

# 2. Dependencies from the recipe, then the crate.
FROM chef AS builder
COPY --from=planner /build/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --release --locked --bin identity-sidecar --recipe-path recipe.json
# Declared after the cook step: a new commit must not invalidate the dependency layer.
ARG REVISION=""
# Read by the binary at compile time (option_env!) for its build_info metric.
ENV IDENTITY_SIDECAR_COMMIT=${REVISION}
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --release --locked --bin identity-sidecar \
 && install -D -m 0755 target/release/identity-sidecar /out/usr/local/bin/identity-sidecar \
 && install -D -m 0644 config/default.toml /out/etc/identity-sidecar/config.toml \
 && mkdir -p migrations /out/usr/share/identity-sidecar /out/var/lib/identity-sidecar \
 && cp -r migrations /out/usr/share/identity-sidecar/migrations

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
ARG VERSION=""
ARG REVISION=""
ARG CREATED=""
ARG SOURCE=""
LABEL org.opencontainers.image.title="identity-sidecar" \
      org.opencontainers.image.description="Keycloak token gate, B2B membership reconciliation and entitlement headers between APISIX and web apps" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"

COPY --from=builder /out/usr/local/bin/identity-sidecar /usr/local/bin/identity-sidecar
COPY --from=builder /out/etc/identity-sidecar/config.toml /etc/identity-sidecar/config.toml
# Migrations are compiled into the binary (`identity-sidecar migrate`, or on `serve` when
# database.migrate_on_start); this copy is for reference and DBA review only.
COPY --from=builder /out/usr/share/identity-sidecar/migrations /usr/share/identity-sidecar/migrations
# Writable data directory for the default SQLite file; mount a volume here to keep it.
COPY --from=builder --chown=65532:65532 /out/var/lib/identity-sidecar /var/lib/identity-sidecar

ENV SIDECAR_CONFIG=/etc/identity-sidecar/config.toml
WORKDIR /var/lib/identity-sidecar
# Non-root (distroless "nonroot"); numeric so Kubernetes runAsNonRoot can verify it.
USER 65532:65532
# 8080: public (proxy, forward-auth, /_sidecar). 8081: admin (/healthz, /readyz, /metrics,
# /admin/v1): never route it through the gateway.
EXPOSE 8080 8081
# The image has no shell or curl: the binary checks itself. `health --ready` exits 0 when the
# admin port (server.admin_listen; 0.0.0.0 is asked on 127.0.0.1) answers /readyz with 200,
# i.e. Keycloak's signing keys are loaded, and 1 otherwise; it gives up after 3 s by itself.
# Kubernetes ignores HEALTHCHECK; the chart has its own probes.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/identity-sidecar", "health", "--ready"]
ENTRYPOINT ["/usr/local/bin/identity-sidecar"]
CMD ["serve"]

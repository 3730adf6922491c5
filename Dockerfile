# One image for every binary of wxpay-notify: wxpay-gateway, wxpay-worker, wxpay-sim.
# Build:  docker build -t wxpay-notify .      (or `docker-compose build`)
# Kubernetes uses the same image (deploy/base, image name `wxpay-notify`).

# ---- build stage ------------------------------------------------------------------------
# The toolchain the workspace is developed with; rust-version in Cargo.toml is the floor.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# Only what the build needs (see .dockerignore): the manifests, the lock file and the crates.
COPY . .
# The same command as scripts/run, so the image runs exactly what was tested.
# --locked: Cargo.lock is the reviewed dependency set; never resolve anew in an image build.
RUN cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/wxpay-gateway target/release/wxpay-worker target/release/wxpay-sim /out/

# ---- runtime stage ----------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime
# ca-certificates: rustls-native-certs reads the system roots (amqps://, the WeChat Pay API).
# No libpq and no OpenSSL: PostgreSQL is reached through tokio-postgres, TLS through rustls.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 wxpay \
 && useradd --system --uid 10001 --gid wxpay --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin wxpay \
 && mkdir -p /etc/wxpay /run/wxpay \
 && chown wxpay:wxpay /run/wxpay
COPY --from=build /out/ /usr/local/bin/
# Numeric user so Kubernetes' runAsNonRoot can verify it without resolving names.
USER 10001:10001
ENV WXPAY_CONFIG=/etc/wxpay/wxpay.toml \
    RUST_LOG=info
# gateway: notify routes + /healthz /readyz /metrics; worker: 9091; reconciler: 9092.
EXPOSE 8080 9091 9092
# No ENTRYPOINT: every service names its binary (docker-compose.yml, deploy/base).
CMD ["wxpay-gateway"]

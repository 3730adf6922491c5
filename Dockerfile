# wxpay-notify's images, from one build:
#   target runtime (default)  wxpay-gateway, wxpay-worker   docker build -t wxpay-notify .
#   target sim                wxpay-sim (tests, demo)       docker build --target sim -t wxpay-sim .
# Kubernetes uses the runtime image (deploy/base, image name `wxpay-notify`); docker-compose
# builds both. The production image carries no simulator.
#
# Base images are build arguments only so that scripts/compose-test can substitute local
# stand-ins where no registry is reachable; everyone else keeps the defaults.
ARG RUST_IMAGE=rust:1.95-bookworm

# ---- build stage ------------------------------------------------------------------------
# The toolchain the workspace is developed with; rust-version in Cargo.toml is the floor.
FROM ${RUST_IMAGE} AS build
WORKDIR /src

# Dependencies first, from the manifests alone, with empty crate sources: this layer is
# reused until Cargo.toml or Cargo.lock change, so a source edit rebuilds only our crates.
# A plain layer (no BuildKit cache mount) works with the legacy builder and BuildKit alike.
# Declared targets must exist for cargo to read a manifest, hence the stub bench/test files.
COPY Cargo.toml Cargo.lock ./
COPY shared/Cargo.toml shared/
COPY runtime/Cargo.toml runtime/
COPY gateway/Cargo.toml gateway/
COPY worker/Cargo.toml worker/build.rs worker/
COPY simulator/Cargo.toml simulator/
COPY console/Cargo.toml console/
COPY testkit/Cargo.toml testkit/
RUN for crate in shared runtime gateway worker simulator console testkit; do \
      mkdir -p "$crate/src" "$crate/benches" "$crate/tests/it" \
      && echo 'fn main() {}' >"$crate/src/main.rs" \
      && touch "$crate/src/lib.rs" "$crate/tests/it/main.rs"; \
    done \
 && for bench in shared/benches/verify gateway/benches/throughput worker/benches/drain; do \
      echo 'fn main() {}' >"$bench.rs"; \
    done \
 && mkdir -p worker/migrations \
 && cargo build --release --locked --bins \
 && rm -rf shared runtime gateway worker simulator console testkit

COPY . .
# The same command as scripts/run, so the image runs exactly what was tested. The stub
# builds of our own crates are removed first: their outputs could look newer than the
# sources just copied (COPY keeps the files' modification times).
# --locked: Cargo.lock is the reviewed dependency set; never resolve anew in an image build.
RUN cargo clean --release --locked -p wxpay-shared -p wxpay-runtime -p wxpay-gateway -p wxpay-worker -p wxpay-simulator -p wxpay-console -p wxpay-testkit \
 && cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/wxpay-gateway target/release/wxpay-worker target/release/wxpay-sim target/release/wxpay-console /out/ \
 && strip --strip-debug /out/*

# The runtime root file system, assembled here so that the images need no distribution:
# the shared libraries the binaries and the shell tools link against, the CA roots
# (rustls-native-certs: amqps://, the WeChat Pay API), /bin/sh, cat and sleep (Kubernetes'
# config init container and preStop hook), bash (the compose health checks use /dev/tcp),
# a passwd entry for the numeric user, and a key-less configuration for migrations. No libpq and no OpenSSL: PostgreSQL is reached
# through tokio-postgres, TLS through rustls.
RUN set -eu; \
    root=/rootfs; \
    tools="/bin/sh /bin/dash /bin/bash /bin/cat /bin/sleep"; \
    mkdir -p "$root/usr/local/bin" "$root/usr/local/share/wxpay" "$root/etc/ssl/certs" \
      "$root/etc/wxpay" "$root/run/wxpay" "$root/tmp"; \
    for f in /out/* $tools; do \
      ldd "$f" | awk '/=> \// { print $3 } /^[[:space:]]*\/[^ ]*ld-linux/ { print $1 }'; \
    done | sort -u | while read -r lib; do cp --parents -L "$lib" "$root/"; done; \
    for t in $tools; do cp --parents -L "$t" "$root/"; done; \
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"; \
    printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nwxpay:x:10001:10001:wxpay:/nonexistent:/usr/sbin/nologin\n' >"$root/etc/passwd"; \
    printf 'root:x:0:\nwxpay:x:10001:\n' >"$root/etc/group"; \
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"; \
    printf '%s\n' '# Every key at its default and no merchants: `wxpay-worker migrate` needs only' \
      '# WXPAY__DATABASE__URL, so it runs with this file and no merchant keys mounted.' \
      >"$root/usr/local/share/wxpay/defaults.toml"; \
    chown 10001:10001 "$root/run/wxpay"; \
    chmod 1777 "$root/tmp"

# ---- runtime image: the services --------------------------------------------------------
FROM scratch AS runtime
COPY --from=build /rootfs/ /
COPY --from=build /out/wxpay-gateway /out/wxpay-worker /out/wxpay-console /usr/local/bin/
# Numeric user so Kubernetes' runAsNonRoot can verify it without resolving names.
USER 10001:10001
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    WXPAY_CONFIG=/etc/wxpay/wxpay.toml \
    RUST_LOG=info
# gateway: notify routes + /healthz /readyz /metrics; worker: 9091; reconciler: 9092.
EXPOSE 8080 9091 9092
# No ENTRYPOINT: every service names its binary (docker-compose.yml, deploy/base).
CMD ["wxpay-gateway"]

# ---- simulator image: plays WeChat Pay for tests and the compose demo -------------------
FROM scratch AS sim
COPY --from=build /rootfs/ /
COPY --from=build /out/wxpay-sim /usr/local/bin/
USER 10001:10001
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    WXPAY_CONFIG=/etc/wxpay/wxpay.toml \
    WXPAY_SIM_CONFIG=/etc/wxpay/simulator.toml \
    RUST_LOG=info
EXPOSE 8090
CMD ["wxpay-sim", "--help"]

# The default target (last stage otherwise): the production image.
FROM runtime

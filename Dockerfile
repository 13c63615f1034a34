# syntax=docker/dockerfile:1
# The one capturefleet image: operator, capture agent and simulated device runtime are
# subcommands of the same binary. Distroless, non-root (uid 65532), no shell.
# Build: docker build -t ghcr.io/capturefleet/capturefleet:0.1.0 .   (docs/images.md)

# ---- build --------------------------------------------------------------------------------
FROM docker.io/library/rust:1.95-bookworm AS build
# librdkafka (built from source by rdkafka-sys with make) links OpenSSL and zlib; the rust image
# (buildpack-deps) has make and a C compiler, these make the headers explicit.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libssl-dev zlib1g-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin capturefleet \
 && install -D -m 0755 target/release/capturefleet /out/usr/local/bin/capturefleet
# Shared libraries the binary needs beyond glibc and libgcc (which the runtime image has):
# copied beside it, so the image does not depend on what distroless happens to ship.
RUN mkdir -p /out/usr/local/lib/capturefleet \
 && ldd /out/usr/local/bin/capturefleet \
    | awk '$3 ~ /^\// {print $3}' \
    | grep -Ev '/(libc|libm|libdl|libpthread|librt|libgcc_s|ld-linux[^/]*)\.so' \
    | xargs -r -I{} cp -L {} /out/usr/local/lib/capturefleet/ \
 && LD_LIBRARY_PATH=/out/usr/local/lib/capturefleet /out/usr/local/bin/capturefleet --version

# ---- runtime ------------------------------------------------------------------------------
FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="capturefleet" \
      org.opencontainers.image.description="capturefleet operator, capture agent and device simulator" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/ /
ENV LD_LIBRARY_PATH=/usr/local/lib/capturefleet \
    CAPTUREFLEET_LOG_FORMAT=json
# 65532 is distroless' `nonroot`; the operator's device Pods and the chart run as this uid.
USER 65532:65532
# On PATH (/usr/local/bin) because the device Pods' exec probes call `capturefleet device probe …`.
ENTRYPOINT ["/usr/local/bin/capturefleet"]
CMD ["--help"]

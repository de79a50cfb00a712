# syntax=docker/dockerfile:1
#
# ssm-operator container image.
#
#   docker build -t <registry>/ssm-operator:<tag> .
#
# Stage 1 builds the release binary exactly as `make release` does. BuildKit
# cache mounts keep the crates.io downloads and the compiled dependencies
# between builds, so a source change recompiles only the workspace crates.
# Stage 2 is distroless: glibc, libgcc and CA certificates (rustls verifies
# the AWS and Kubernetes API server certificates against them), no shell, no
# package manager, running as the unprivileged "nonroot" user 65532.

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN --mount=type=cache,id=ssm-operator-cargo-registry,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,id=ssm-operator-cargo-git,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,id=ssm-operator-target,target=/src/target,sharing=locked \
    cargo build --release --locked --bin ssm-operator \
 && install -D -m 0755 target/release/ssm-operator /out/ssm-operator

FROM gcr.io/distroless/cc-debian12:nonroot
LABEL org.opencontainers.image.title="ssm-operator" \
      org.opencontainers.image.description="Kubernetes operator mirroring AWS SSM Run Command invocations into CommandInvocation resources" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /out/ssm-operator /ssm-operator
USER 65532:65532
# /metrics, /healthz and /readyz (--http-bind, default 0.0.0.0:8080).
EXPOSE 8080
ENTRYPOINT ["/ssm-operator"]
CMD ["run"]

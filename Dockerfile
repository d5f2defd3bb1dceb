# syntax=docker/dockerfile:1
# The waypost image: a release build on Debian bookworm, copied into distroless cc (glibc, CA
# certificates, no shell) running as the nonroot user (65532). The Helm chart (charts/waypost)
# deploys this image; build it with
#   docker build -t <registry>/waypost:<version> .

FROM rust:1-bookworm AS build
WORKDIR /src
# The manifest names every target, so the two bench sources must be present too (only they: the
# rest of bench/, results included, changes often and would invalidate this layer).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY bench/balance.rs bench/refresh.rs ./bench/
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin waypost \
    && install -D -m 0755 target/release/waypost /out/waypost

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/waypost /usr/local/bin/waypost
# A working default; the chart mounts its ConfigMap over /etc/waypost.
COPY configs/kubernetes.yaml /etc/waypost/config.yaml
USER nonroot:nonroot
# 4140: outbound listener (loopback in the default config); 4191: admin (/metrics /live /ready).
EXPOSE 4140 4191
ENTRYPOINT ["/usr/local/bin/waypost"]
CMD ["run", "--config", "/etc/waypost/config.yaml"]

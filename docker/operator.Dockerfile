# bpfleet-operator: build with `docker build -f docker/operator.Dockerfile .` from the
# repository root. Runtime: distroless (glibc, CA roots, no shell, no package manager),
# non-root uid 65532. Expected size: ~35 MB (distroless/cc ~23 MB + a ~12 MB stripped binary).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p operator --bin bpfleet-operator \
    && install -D -s target/release/bpfleet-operator /out/bpfleet-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/bpfleet-operator /usr/local/bin/bpfleet-operator
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bpfleet-operator"]

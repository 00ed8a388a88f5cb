# bpfleet-agent: build with `docker build -f docker/agent.Dockerfile .` from the
# repository root. Runtime: debian slim, because the chart's init container uses
# `mount` and `mountpoint` to mount bpffs on hosts that lack it; the agent itself runs
# with capabilities only (see charts/bpfleet/templates/agent-daemonset.yaml).
# Expected size: ~85 MB (bookworm-slim ~75 MB + a 9 MB stripped binary).
FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p node-agent --bin bpfleet-agent \
    && install -D -s target/release/bpfleet-agent /out/bpfleet-agent

FROM docker.io/library/debian:bookworm-slim
COPY --from=build /out/bpfleet-agent /usr/local/bin/bpfleet-agent
ENTRYPOINT ["/usr/local/bin/bpfleet-agent"]

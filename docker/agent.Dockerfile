# bpfleet-agent: one static binary FROM scratch; nothing is pulled. Built by
# scripts/images.sh (see docker/operator.Dockerfile). The chart's init container runs
# `bpfleet-agent mount-bpffs`, so the image needs no shell and no mount tools. It runs as
# root with the capabilities the chart grants (bpffs pins and host paths belong to root).
FROM scratch
COPY bpfleet-agent /usr/local/bin/bpfleet-agent
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY passwd group /etc/
ENTRYPOINT ["/usr/local/bin/bpfleet-agent"]

# bpfleet-operator: one static binary FROM scratch; nothing is pulled. Built by
# scripts/images.sh, which stages the context (the binary linked with crt-static on the gnu
# target, the host's CA roots, passwd/group naming the non-root user 65532) and runs
# buildah (or docker). Registry names resolve in Rust from /etc/hosts and /etc/resolv.conf
# (both given by the kubelet), so no NSS modules are needed. Size: see docs/install.md.
FROM scratch
COPY bpfleet-operator /usr/local/bin/bpfleet-operator
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY passwd group /etc/
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/bpfleet-operator"]

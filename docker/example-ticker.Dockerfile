# bpfleet-example-ticker: the examples' workload, one static binary FROM scratch (see
# examples/apps/ticker.c; and mapcat.c, a map volume's reader). Built by `scripts/images.sh --examples`; nothing is pulled.
FROM scratch
COPY ticker /usr/local/bin/ticker
COPY mapcat /usr/local/bin/mapcat
COPY passwd /etc/passwd
USER 65532
ENTRYPOINT ["/usr/local/bin/ticker"]

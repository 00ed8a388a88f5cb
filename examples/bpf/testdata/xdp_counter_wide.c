// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_counter_wide: like xdp_counter.c, but packet_count holds 16-byte values
 * (packets and bytes). Its map cannot take over xdp_counter's pinned
 * packet_count (value size 8): tests use it to check that an upgrade to it
 * gets a fresh map and says so.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct counts {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct counts);
} packet_count SEC(".maps");

SEC("xdp")
int count_packets(struct xdp_md *ctx)
{
	__u32 key = 0;
	struct counts *c = bpf_map_lookup_elem(&packet_count, &key);

	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, ctx->data_end - ctx->data);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

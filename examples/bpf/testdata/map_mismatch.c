// SPDX-License-Identifier: GPL-2.0
/*
 * map_mismatch: like xdp_counter.c, but its packet_count map has 4 entries
 * instead of 1. Reusing xdp_counter's pinned packet_count for it would be
 * wrong, so tests use it to check that pinned-map reuse refuses a mismatch.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} packet_count SEC(".maps");

SEC("xdp")
int count_packets(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&packet_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_counter: counts every packet that reaches an interface and lets it pass.
 *
 * The smallest useful XDP program: it shows the whole bpfleet path (load,
 * attach, pin the map) without changing traffic.
 * Read the count: bpftool map dump pinned <pin dir>/packet_count
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* One plain u64 (not per-CPU) so a reader gets one number without summing. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} packet_count SEC(".maps");

SEC("xdp")
int count_packets(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&packet_count, &key);

	/* The lookup cannot fail for key 0 of a 1-entry array, but the verifier
	 * requires the NULL check. */
	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

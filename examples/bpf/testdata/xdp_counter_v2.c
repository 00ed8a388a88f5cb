// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_counter_v2: a second revision of xdp_counter for upgrade tests.
 *
 * Same function name and map (name, type, sizes) as xdp_counter.c, so the
 * pinned map can be reused across the upgrade, but it adds 2 per packet: a
 * test sees the count grow by 2 once the new revision has replaced the old.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

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

	if (count)
		__sync_fetch_and_add(count, 2);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_drop_every: counts packets and drops every DROP_EVERY-th one (0: none), counting
 * the drops too, so a rollout health gate can bound "drops per packet" with the
 * program's own counters:
 *
 *   counters  ARRAY  u32 -> u64   key 0: packets seen, key 1: packets dropped
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 DROP_EVERY = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

SEC("xdp")
int drop_every(struct xdp_md *ctx)
{
	__u32 seen_key = 0, dropped_key = 1;
	__u32 every = DROP_EVERY;
	__u64 *seen = bpf_map_lookup_elem(&counters, &seen_key);
	__u64 *dropped = bpf_map_lookup_elem(&counters, &dropped_key);
	__u64 nth;

	if (!seen || !dropped)
		return XDP_PASS;
	nth = __sync_fetch_and_add(seen, 1) + 1;
	if (every != 0 && nth % every == 0) {
		__sync_fetch_and_add(dropped, 1);
		return XDP_DROP;
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

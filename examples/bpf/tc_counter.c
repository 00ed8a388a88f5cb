// SPDX-License-Identifier: GPL-2.0
/*
 * tc_counter: counts packets seen by a TC hook (ingress or egress, chosen by
 * the manifest) and lets them continue.
 *
 * The section is "classifier" rather than "tc" because aya 0.14, the loader
 * bpfleet uses, only recognises the older name.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifndef TC_ACT_OK
#define TC_ACT_OK 0
#endif

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} tc_packet_count SEC(".maps");

SEC("classifier")
int count_tc(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(&tc_packet_count, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
	return TC_ACT_OK;
}

char LICENSE[] SEC("license") = "GPL";

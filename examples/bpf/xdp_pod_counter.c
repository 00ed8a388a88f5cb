// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_pod_counter: counts the IPv4 packets arriving on an interface by their
 * destination address, and lets every packet pass.
 *
 * Attached inside each pod of a Deployment (examples/manifests/xdp-pods.yaml),
 * every pod's eth0 shares this one map, and each pod's count sits under its own
 * address: packets per pod. Packets that are not IPv4 count under 0.0.0.0.
 * Read it: bpftool map dump pinned <pin dir>/packets_by_ip
 *   (key: the address in network byte order, value: a u64 count)
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u64);
} packets_by_ip SEC(".maps");

SEC("xdp")
int count_by_pod(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 addr = 0;
	__u64 zero = 0, *count;

	if ((void *)(eth + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) <= end)
			addr = ip->daddr;
	}
	count = bpf_map_lookup_elem(&packets_by_ip, &addr);
	if (!count) {
		/* First packet to this address: make its entry (another CPU may
		 * have just made it, which is as good), then count as usual. */
		bpf_map_update_elem(&packets_by_ip, &addr, &zero, BPF_NOEXIST);
		count = bpf_map_lookup_elem(&packets_by_ip, &addr);
	}
	if (count)
		__sync_fetch_and_add(count, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

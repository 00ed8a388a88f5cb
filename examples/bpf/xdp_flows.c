// SPDX-License-Identifier: GPL-2.0
/*
 * xdp_flows: counts packets and bytes per IPv4 flow (source, destination,
 * protocol) in a hash map, and per kind of traffic per CPU, and lets every
 * packet pass.
 *
 * The maps carry BTF for structs and an enum, so `kubectl bpfleet maps` prints
 * their fields and kinds by name, `spec.metrics` turns them into Prometheus
 * series labelled by key fields, and a pod can mount them (docs/maps.md).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

enum traffic_kind {
	KIND_OTHER = 0,
	KIND_ICMP = 1,
	KIND_TCP = 2,
	KIND_UDP = 3,
};

struct flow_key {
	__u32 saddr; /* network byte order, as on the wire */
	__u32 daddr;
	__u8 proto;
	__u8 pad[3];
};

struct flow_stats {
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct flow_key);
	__type(value, struct flow_stats);
} flows SEC(".maps");

/* A hash, not an array: the kernel wants an array's BTF key to be a plain u32. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 4);
	__type(key, enum traffic_kind);
	__type(value, struct flow_stats);
} by_kind SEC(".maps");

static __always_inline enum traffic_kind kind_of(__u8 proto)
{
	switch (proto) {
	case 1:
		return KIND_ICMP;
	case 6:
		return KIND_TCP;
	case 17:
		return KIND_UDP;
	default:
		return KIND_OTHER;
	}
}

SEC("xdp")
int count_flows(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	__u64 bytes = end - data;
	struct flow_key key = {};
	struct flow_stats *stats;
	enum traffic_kind kind = KIND_OTHER;

	if ((void *)(ip + 1) <= end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		key.saddr = ip->saddr;
		key.daddr = ip->daddr;
		key.proto = ip->protocol;
		kind = kind_of(ip->protocol);
		stats = bpf_map_lookup_elem(&flows, &key);
		if (stats) {
			__sync_fetch_and_add(&stats->packets, 1);
			__sync_fetch_and_add(&stats->bytes, bytes);
		} else {
			struct flow_stats first = { .packets = 1, .bytes = bytes };
			/* Two CPUs may both add the first packet: one wins, the other's
			 * packet is lost to the count, as a sampled counter may. */
			bpf_map_update_elem(&flows, &key, &first, BPF_NOEXIST);
		}
	}
	stats = bpf_map_lookup_elem(&by_kind, &kind);
	if (stats) {
		/* Per-CPU values: no other CPU writes this copy. */
		stats->packets += 1;
		stats->bytes += bytes;
	} else {
		/* Every CPU's copy starts at zero; this CPU's gets the first packet. */
		struct flow_stats first = { .packets = 1, .bytes = bytes };

		bpf_map_update_elem(&by_kind, &kind, &first, BPF_NOEXIST);
	}
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

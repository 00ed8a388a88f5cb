// SPDX-License-Identifier: GPL-2.0
/*
 * udp_counter: counts IPv4 UDP packets to port 9999 at XDP or TC, for the
 * zero-gap upgrade tests. Only the test's own stream is counted (no ARP, no
 * IPv6 neighbour discovery), so the count can be compared with what was sent.
 *
 * REVISION is set through globalData, so each upgrade is a new revision, and
 * every packet is also counted under its revision in udp_count_by_rev: the
 * test sees which revisions counted and that no packet was counted twice.
 *
 * The TC program returns TC_ACT_UNSPEC ("no verdict, next program"), as
 * programs that share a hook do: if an old and a new revision were both
 * attached at once, both would count the same packet.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define PROBE_PORT 9999
#define REVISIONS 64

volatile const __u32 REVISION = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} udp_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, REVISIONS);
	__type(key, __u32);
	__type(value, __u64);
} udp_count_by_rev SEC(".maps");

static __always_inline int is_probe(void *data, void *data_end)
{
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp;

	if ((void *)(ip + 1) > data_end)
		return 0;
	if (eth->h_proto != bpf_htons(ETH_P_IP) || ip->protocol != IPPROTO_UDP || ip->ihl != 5)
		return 0;
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return 0;
	return udp->dest == bpf_htons(PROBE_PORT);
}

static __always_inline void count(void)
{
	__u32 key = 0;
	__u32 rev = REVISION % REVISIONS;
	__u64 *total = bpf_map_lookup_elem(&udp_count, &key);
	__u64 *mine = bpf_map_lookup_elem(&udp_count_by_rev, &rev);

	if (total)
		__sync_fetch_and_add(total, 1);
	if (mine)
		__sync_fetch_and_add(mine, 1);
}

SEC("xdp")
int xdp_udp_count(struct xdp_md *ctx)
{
	if (is_probe((void *)(long)ctx->data, (void *)(long)ctx->data_end))
		count();
	return XDP_PASS;
}

SEC("classifier")
int tc_udp_count(struct __sk_buff *skb)
{
	if (is_probe((void *)(long)skb->data, (void *)(long)skb->data_end))
		count();
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * multi: one object holding one program of (almost) every type bpfleet
 * supports, for the node agent's kernel tests. Each program counts into its
 * own map so a test can tell which one ran.
 *
 * Fentry, Fexit, Kprobe, Kretprobe and Lsm are refused by the CI kernel at
 * load time; they are here so ELF parsing and attach planning can be tested
 * and so the refusal a user sees can be checked.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#ifndef TC_ACT_UNSPEC
#define TC_ACT_UNSPEC (-1)
#endif

/* A 1-entry u64 array: one number a test reads back. */
#define COUNTER_MAP(name)                       \
	struct {                                \
		__uint(type, BPF_MAP_TYPE_ARRAY); \
		__uint(max_entries, 1);         \
		__type(key, __u32);             \
		__type(value, __u64);           \
	} name SEC(".maps")

COUNTER_MAP(raw_count);
COUNTER_MAP(cgroup_count);
COUNTER_MAP(cgroup_drop_count);
COUNTER_MAP(xdp_drop_count);
COUNTER_MAP(tc_seq);
COUNTER_MAP(tc_first_seq);
COUNTER_MAP(tc_second_seq);
COUNTER_MAP(fentry_count);
COUNTER_MAP(fexit_count);
COUNTER_MAP(kprobe_count);
COUNTER_MAP(kretprobe_count);
COUNTER_MAP(lsm_count);

static __always_inline void bump(void *map)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(map, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
}

SEC("raw_tracepoint/sys_enter")
int count_raw_sys_enter(struct bpf_raw_tracepoint_args *ctx)
{
	bump(&raw_count);
	return 0;
}

/* cgroup_skb: 1 lets the packet through, 0 drops it. */
SEC("cgroup_skb/egress")
int cgroup_count_egress(struct __sk_buff *skb)
{
	bump(&cgroup_count);
	return 1;
}

SEC("cgroup_skb/ingress")
int cgroup_drop_ingress(struct __sk_buff *skb)
{
	bump(&cgroup_drop_count);
	return 0;
}

/* Drops everything: a test sees traffic stop while it is attached. */
SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	bump(&xdp_drop_count);
	return XDP_DROP;
}

/*
 * Two TC programs for ordering tests. Each takes the next number from the
 * shared tc_seq counter and stores it plus one (so 0 means "never ran") in
 * its own map: after traffic, the smaller value ran first. TC_ACT_UNSPEC
 * passes the packet on to the next program in the chain.
 */
static __always_inline void record_seq(void *own)
{
	__u32 key = 0;
	__u64 *counter = bpf_map_lookup_elem(&tc_seq, &key);
	__u64 *mine = bpf_map_lookup_elem(own, &key);

	if (counter && mine)
		*mine = __sync_fetch_and_add(counter, 1) + 1;
}

SEC("classifier")
int tc_mark_first(struct __sk_buff *skb)
{
	record_seq(&tc_first_seq);
	return TC_ACT_UNSPEC;
}

SEC("classifier")
int tc_mark_second(struct __sk_buff *skb)
{
	record_seq(&tc_second_seq);
	return TC_ACT_UNSPEC;
}

/* Programs this kernel refuses (no trampolines, no kprobes): compile-only. */
SEC("fentry/do_sys_openat2")
int fentry_open(void *ctx)
{
	bump(&fentry_count);
	return 0;
}

SEC("fexit/do_sys_openat2")
int fexit_open(void *ctx)
{
	bump(&fexit_count);
	return 0;
}

/* The kprobe target comes from the manifest, like a uprobe's. */
SEC("kprobe")
int kprobe_open(void *ctx)
{
	bump(&kprobe_count);
	return 0;
}

SEC("kretprobe")
int kretprobe_open(void *ctx)
{
	bump(&kretprobe_count);
	return 0;
}

/* An LSM program returns 0 to allow, -errno to deny; this one only counts. */
SEC("lsm/file_open")
int lsm_file_open(void *ctx)
{
	bump(&lsm_count);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * global_data: an XDP counter configured through global variables, the way a
 * BpfProgram's spec.globalData configures it.
 *
 * SAMPLE_RATE lives in .rodata: the loader patches it before load, and the
 * verifier then treats it as a constant. MAX_SAMPLES lives in .data to show
 * the writable section too. Every SAMPLE_RATE-th packet is counted into
 * sampled_count_map, until MAX_SAMPLES are counted (0 = no limit).
 *
 * config_seen receives the SAMPLE_RATE this program sees on every run, so a
 * test can prove the configured value reached the kernel.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* volatile: keeps clang from folding the default into the code, which would
 * make the loader's patch invisible. */
volatile const __u32 SAMPLE_RATE = 1;
/* Forced into .data: a zero initialiser would otherwise land in .bss. */
volatile __u64 MAX_SAMPLES SEC(".data") = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sampled_count_map SEC(".maps");

/* Every packet, sampled or not: the basis of the sampling decision. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} packets_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} config_seen SEC(".maps");

SEC("xdp")
int sampled_count(struct xdp_md *ctx)
{
	__u32 key = 0;
	__u32 rate = SAMPLE_RATE;
	__u64 max = MAX_SAMPLES;
	__u32 *seen_rate = bpf_map_lookup_elem(&config_seen, &key);
	__u64 *seen = bpf_map_lookup_elem(&packets_seen, &key);
	__u64 *sampled = bpf_map_lookup_elem(&sampled_count_map, &key);
	__u64 nth;

	if (seen_rate)
		*seen_rate = rate;
	if (!seen || !sampled)
		return XDP_PASS;

	/* A rate of 0 would mean "never"; treat it as "every packet". */
	if (rate == 0)
		rate = 1;
	/* The value before the increment: the first packet is always sampled. */
	nth = __sync_fetch_and_add(seen, 1);
	if (nth % rate == 0 && (max == 0 || *sampled < max))
		__sync_fetch_and_add(sampled, 1);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

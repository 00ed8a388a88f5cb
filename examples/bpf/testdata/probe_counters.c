// SPDX-License-Identifier: GPL-2.0
/*
 * probe_counters: counts getppid(2) calls of one process (TARGET_TGID, set through
 * globalData) into maps of every shape the agent's Probe reads or refuses, so a test
 * can compare what Probe answers with what bpftool shows:
 *
 *   calls         ARRAY         u32 -> u64   key 0: calls, key 1: 10 per call
 *   small         ARRAY         u32 -> u32   a value shorter than 8 bytes
 *   calls_percpu  PERCPU_ARRAY  u32 -> 12 bytes (count, 0, 0xffffffff): laid out
 *                                             16 bytes per CPU by the kernel
 *   per_key       PERCPU_HASH   u64 -> u64   key 7: calls
 *   wide_key      HASH          16-byte keys (Probe refuses them)
 *   events        RINGBUF       (Probe refuses the type)
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 TARGET_TGID = 0;

struct wide_value {
	__u32 count;
	__u32 zero;
	__u32 marker;
};

struct wide {
	__u64 a;
	__u64 b;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} small SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct wide_value);
} calls_percpu SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 8);
	__type(key, __u64);
	__type(value, __u64);
} per_key SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4);
	__type(key, struct wide);
	__type(value, __u64);
} wide_key SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4096);
} events SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int count_getppid(void *ctx)
{
	__u32 zero = 0, one = 1;
	__u64 seven = 7, first = 1;
	struct wide wk;
	struct wide_value *w;
	__u64 *c;
	__u32 *s;

	if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
		return 0;
	c = bpf_map_lookup_elem(&calls, &zero);
	if (c)
		__sync_fetch_and_add(c, 1);
	c = bpf_map_lookup_elem(&calls, &one);
	if (c)
		__sync_fetch_and_add(c, 10);
	s = bpf_map_lookup_elem(&small, &zero);
	if (s)
		__sync_fetch_and_add(s, 1);
	w = bpf_map_lookup_elem(&calls_percpu, &zero);
	if (w) {
		w->count += 1;
		w->marker = 0xffffffff;
	}
	c = bpf_map_lookup_elem(&per_key, &seven);
	if (c)
		*c += 1;
	else
		bpf_map_update_elem(&per_key, &seven, &first, BPF_NOEXIST);
	/* Stored field by field: an initialiser becomes a .rodata.cst16 constant. */
	wk.a = 1;
	wk.b = 2;
	bpf_map_update_elem(&wide_key, &wk, &first, BPF_ANY);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

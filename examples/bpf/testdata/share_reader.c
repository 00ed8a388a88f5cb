// SPDX-License-Identifier: GPL-2.0
/*
 * share_reader: on each getppid(2) call of TARGET_TGID, copies what `shared` holds at
 * key 0 into its own map `seen`. With spec.maps[].from its `shared` is the writer's
 * map, so `seen` shows, in the kernel, that both programs see the same entries.
 * Built again with other SHARED_VALUE_TYPEs: share_reader_narrow (another size) and
 * share_reader_struct (the same size, another BTF type), both incompatible.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#ifndef SHARED_VALUE_TYPE
#define SHARED_VALUE_TYPE __u64
#endif

volatile const __u32 TARGET_TGID = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, SHARED_VALUE_TYPE);
} shared SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int read_shared(void *ctx)
{
	__u32 zero = 0;
	SHARED_VALUE_TYPE *v;
	__u64 *out;

	if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
		return 0;
	v = bpf_map_lookup_elem(&shared, &zero);
	out = bpf_map_lookup_elem(&seen, &zero);
#ifdef SHARED_STRUCT
	if (v && out)
		*out = v->lo;
#else
	if (v && out)
		*out = *v;
#endif
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * share_writer: counts getppid(2) calls of one process (TARGET_TGID) into `shared`,
 * a map other programs use through spec.maps[].from (tests of map sharing).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

volatile const __u32 TARGET_TGID = 0;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
} shared SEC(".maps");

SEC("tracepoint/syscalls/sys_enter_getppid")
int write_shared(void *ctx)
{
	__u32 zero = 0;
	__u64 *c;

	if ((bpf_get_current_pid_tgid() >> 32) != TARGET_TGID)
		return 0;
	c = bpf_map_lookup_elem(&shared, &zero);
	if (c)
		__sync_fetch_and_add(c, 1);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/*
 * uprobe_counter: counts entries to and returns from a user-space function.
 *
 * The target binary and symbol are not in the object: they come from the
 * BpfProgram's uprobe/uretprobe block, so one object serves any function.
 * Entries and returns go to separate maps so a test can check both fired.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} uprobe_count SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} uretprobe_count SEC(".maps");

static __always_inline void bump(void *map)
{
	__u32 key = 0;
	__u64 *count = bpf_map_lookup_elem(map, &key);

	if (count)
		__sync_fetch_and_add(count, 1);
}

SEC("uprobe")
int count_calls(void *ctx)
{
	bump(&uprobe_count);
	return 0;
}

SEC("uretprobe")
int count_returns(void *ctx)
{
	bump(&uretprobe_count);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";

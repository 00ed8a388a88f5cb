// SPDX-License-Identifier: Apache-2.0
/*
 * mapcat: prints the value at key 0 of a pinned eBPF map (the first 8 bytes, as an
 * unsigned integer) every --every seconds, or once; or writes one (`PIN write VALUE`).
 * What a pod with a bpfleet map volume runs: it needs no capability, only bpf(2) allowed
 * by its seccomp profile and the pin's file mode (read-only unless the volume is writable).
 *
 *   mapcat PIN                print once
 *   mapcat PIN every SECONDS  print forever
 *   mapcat PIN write VALUE    write the value at key 0
 */
#include <linux/bpf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/syscall.h>

static int bpf(int cmd, union bpf_attr *attr)
{
	return syscall(SYS_bpf, cmd, attr, sizeof(*attr));
}

int main(int argc, char **argv)
{
	union bpf_attr a;
	int writing = argc == 4 && strcmp(argv[2], "write") == 0;
	int every = argc == 4 && strcmp(argv[2], "every") == 0 ? atoi(argv[3]) : 0;
	unsigned int key = 0;
	/* Room for a per-CPU value on many CPUs: only the first 8 bytes are printed. */
	static unsigned long long value[4096];
	int fd;

	if (argc != 2 && !writing && every <= 0) {
		fprintf(stderr, "usage: mapcat PIN [every SECONDS | write VALUE]\n");
		return 2;
	}
	memset(&a, 0, sizeof(a));
	a.pathname = (unsigned long)argv[1];
	a.file_flags = writing ? 0 : BPF_F_RDONLY;
	fd = bpf(BPF_OBJ_GET, &a);
	if (fd < 0) {
		perror("open the pinned map");
		return 1;
	}
	for (;;) {
		memset(&a, 0, sizeof(a));
		a.map_fd = fd;
		a.key = (unsigned long)&key;
		a.value = (unsigned long)value;
		if (writing) {
			value[0] = strtoull(argv[3], NULL, 10);
			if (bpf(BPF_MAP_UPDATE_ELEM, &a) < 0) {
				perror("write the map");
				return 1;
			}
			return 0;
		}
		if (bpf(BPF_MAP_LOOKUP_ELEM, &a) < 0) {
			perror("read the map");
			return 1;
		}
		printf("%llu\n", value[0]);
		fflush(stdout);
		if (every <= 0)
			return 0;
		sleep(every);
	}
}

// SPDX-License-Identifier: GPL-2.0
/*
 * uprobe_target: a plain user-space program (built for the host, not BPF)
 * that uprobe tests attach to. It calls bpfleet_test_probe() a known number
 * of times, so a test can compare that number with the probe's counters.
 *
 * Usage: uprobe_target [N] [wait]
 *   N     how many times to call bpfleet_test_probe (default 10)
 *   wait  before calling, print "ready <pid>" on stdout and block until one
 *         line (or EOF) arrives on stdin.
 *
 * Test protocol: start it with "N wait", read "ready <pid>", attach the
 * uprobe/uretprobe to this binary's bpfleet_test_probe, write a newline to
 * its stdin, then wait for exit. It prints "called <N>" and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Written so the calls have a visible effect even if someone rebuilds with
 * optimisation. */
volatile int bpfleet_test_sink;

/* noinline + used: the symbol must exist and every call must go through it,
 * or the uprobe would never fire. */
__attribute__((noinline, used)) int bpfleet_test_probe(int i)
{
	bpfleet_test_sink += i;
	return i + 1;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 10;
	int wait = argc > 2 && strcmp(argv[2], "wait") == 0;
	int i;

	if (n < 0) {
		fprintf(stderr, "uprobe_target: N must be >= 0\n");
		return 2;
	}
	if (wait) {
		char line[64];

		printf("ready %d\n", (int)getpid());
		fflush(stdout);
		/* NULL (EOF) is also a go signal: the test may just close stdin. */
		(void)fgets(line, sizeof(line), stdin);
	}
	for (i = 0; i < n; i++)
		bpfleet_test_probe(i);
	printf("called %d\n", n);
	return 0;
}

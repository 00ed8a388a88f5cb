// SPDX-License-Identifier: Apache-2.0
/*
 * ticker: the containerised workload of the examples. It handles one "request"
 * every 100 ms by calling handle_request(), the function the uprobe example
 * (examples/manifests/uprobe-containers.yaml) probes inside its container, and
 * otherwise sleeps. Built static (no libraries in its image), with the symbol
 * kept: see scripts/images.sh --examples.
 *
 * Usage: ticker [interval-ms]   (default 100)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static volatile sig_atomic_t stop;
volatile unsigned long handled;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* noinline + used: every request goes through this symbol, so a uprobe on it
 * fires once per request. */
__attribute__((noinline, used)) unsigned long handle_request(unsigned long n)
{
	handled += n;
	return handled;
}

int main(int argc, char **argv)
{
	long ms = argc > 1 ? atol(argv[1]) : 100;
	struct timespec pause = { .tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L };
	unsigned long n = 0;

	signal(SIGTERM, on_signal);
	signal(SIGINT, on_signal);
	printf("ticker: one request every %ld ms\n", ms);
	fflush(stdout);
	while (!stop) {
		handle_request(++n);
		nanosleep(&pause, NULL);
	}
	printf("ticker: %lu requests handled\n", n);
	return 0;
}

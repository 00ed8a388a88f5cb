// SPDX-License-Identifier: GPL-2.0
/*
 * verifier_reject: compiles cleanly but must be rejected by the kernel
 * verifier, so tests can check how a VerifierRejected failure is reported.
 *
 * It reads the first packet byte without first checking data + 1 <= data_end;
 * the verifier refuses any packet access it cannot prove is in bounds.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

SEC("xdp")
int bad_access(struct xdp_md *ctx)
{
	unsigned char *data = (unsigned char *)(long)ctx->data;

	/* Deliberately unchecked. */
	return data[0] == 0xff ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "GPL";

// SPDX-License-Identifier: GPL-2.0
/* share_reader whose `shared` values are a struct of two halves: the writer's shape (8
 * bytes), but another BTF type, which a share refuses. */
#include <linux/types.h>
struct halves {
	__u32 lo;
	__u32 hi;
};
#define SHARED_VALUE_TYPE struct halves
#define SHARED_STRUCT 1
#include "share_reader.c"

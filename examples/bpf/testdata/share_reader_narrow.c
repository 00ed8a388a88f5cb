// SPDX-License-Identifier: GPL-2.0
/* share_reader with 4-byte values in `shared`: a shape the writer's map does not have. */
#define SHARED_VALUE_TYPE __u32
#include "share_reader.c"

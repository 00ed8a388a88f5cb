#!/usr/bin/env bash
# Builds the example and test eBPF objects into examples/bpf/build/.
#
#   examples/bpf/*.c           -> bpf/build/<name>.o   (clang -target bpf)
#   examples/bpf/testdata/*.c  -> bpf/build/<name>.o   (same), except the
#   host programs listed below -> bpf/build/<name>     (normal executables)
#
# An output is rebuilt only when its source is newer. Prints one line per
# output; stops with the compiler's error and a non-zero status on failure.
# Environment: CLANG (default clang), CC (default cc), FORCE=1 rebuilds all.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
src_dir="$here/bpf"
out_dir="$src_dir/build"
CLANG="${CLANG:-clang}"
CC="${CC:-cc}"
FORCE="${FORCE:-0}"

# Sources in testdata/ that are user-space programs, not BPF.
host_programs=(uprobe_target)

# asm/types.h lives in the multiarch include dir on Debian/Ubuntu.
multiarch_inc="/usr/include/$(uname -m)-linux-gnu"

# -g emits BTF (.BTF/.BTF.ext), which aya needs for BTF-defined maps.
# -mcpu=v3 allows using the result of __sync_fetch_and_add (BPF_FETCH).
bpf_flags=(-g -O2 -target bpf -mcpu=v3 -Wall -Werror -I"$multiarch_inc")
# -O0 keeps the probed function and every call to it intact.
host_flags=(-O0 -g -Wall -Werror)

is_host_program() {
	local name="$1" p
	for p in "${host_programs[@]}"; do
		[[ "$p" == "$name" ]] && return 0
	done
	return 1
}

# build SRC OUT: compiles SRC into OUT when OUT is missing or older than SRC.
# The compiler writes a temporary file that is renamed on success, so a failed
# build never leaves an output that looks up to date.
build() {
	local src="$1" out="$2"
	local rel="${out#"$here"/}" tmp="$out.tmp.$$"
	if [[ "$FORCE" != 1 && -e "$out" && ! "$src" -nt "$out" ]]; then
		echo "up to date  $rel"
		return 0
	fi
	local ok=1
	if is_host_program "$(basename "$src" .c)"; then
		"$CC" "${host_flags[@]}" -o "$tmp" "$src" || ok=0
	else
		"$CLANG" "${bpf_flags[@]}" -c "$src" -o "$tmp" || ok=0
	fi
	if ((ok == 0)); then
		rm -f "$tmp"
		echo "FAILED      $rel (from ${src#"$here"/})" >&2
		exit 1
	fi
	mv -f "$tmp" "$out"
	echo "built       $rel"
}

mkdir -p "$out_dir"
shopt -s nullglob
sources=("$src_dir"/*.c "$src_dir"/testdata/*.c)
if ((${#sources[@]} == 0)); then
	echo "no sources found under $src_dir" >&2
	exit 1
fi

for src in "${sources[@]}"; do
	name="$(basename "$src" .c)"
	if is_host_program "$name"; then
		build "$src" "$out_dir/$name"
	else
		build "$src" "$out_dir/$name.o"
	fi
done

#!/usr/bin/env bash
# Extracts the uncompressed ELF vmlinux from an x86 bzImage, for
# `uipd --kernel vmlinux` (an ELF vmlinux with the PVH note boots through
# its PVH entry).
#
#   scripts/extract-vmlinux.sh BZIMAGE OUT
#
# The bzImage's setup header (Documentation/arch/x86/boot.rst, protocol
# 2.08+) says where the compressed kernel is: it starts payload_offset
# (0x248) bytes into the protected-mode part, which follows the
# (setup_sects (0x1f1) + 1) * 512 bytes of real-mode setup, and is
# payload_length (0x24c) bytes long. Its first bytes name the compressor;
# every compressor but gzip has the uncompressed size appended as 4
# little-endian bytes, which are cut off before decompressing and then
# checked against the result. Needs od, the decompressor the kernel was
# built with (gzip, xz, zstd, lz4, bzip2 or lzma; Debian 12's kernels use
# lz4), and readelf (binutils) for the PVH note check.
#
# Exit status: 0 = OUT is an x86-64 ELF vmlinux (a line says whether it has
# the PVH note); 1 = anything else, with the reason.
set -euo pipefail

die() { echo "extract-vmlinux: $*" >&2; exit 1; }

[ $# -eq 2 ] || die "usage: $0 BZIMAGE OUT"
img=$1 out=$2
[ -r "$img" ] || die "cannot read $img"

# Little-endian unsigned integer of $2 bytes at offset $1.
le() { od -An -tu"$2" --endian=little -j "$1" -N "$2" "$img" | tr -d ' \n'; }

[ "$(od -An -c -j $((0x202)) -N 4 "$img" | tr -d ' \n')" = HdrS ] ||
	die "$img is not a bzImage (no HdrS signature at 0x202)"
version=$(le $((0x206)) 2)
[ "$version" -ge $((0x208)) ] ||
	die "$img has boot protocol $(printf '%#x' "$version"): payload_offset needs 2.08 or later"
sects=$(le $((0x1f1)) 1)
[ "$sects" -ne 0 ] || sects=4
offset=$(((sects + 1) * 512 + $(le $((0x248)) 4)))
length=$(le $((0x24c)) 4)
size=$(stat -c %s "$img")
[ "$length" -gt 4 ] && [ $((offset + length)) -le "$size" ] ||
	die "$img: payload at $offset, $length bytes, does not fit the file ($size bytes)"

# The payload (bytes offset .. offset+length-1) to stdout, but for the
# last $1 bytes.
# (head first: it stops reading the file where it should, and tail reads
# all it is given, so no one dies of SIGPIPE under pipefail.)
payload() { head -c $((offset + length - $1)) "$img" | tail -c +$((offset + 1)); }

magic=$(od -An -tx1 -j "$offset" -N 6 "$img" | tr -d ' \n')
case "$magic" in
1f8b*) fmt=gzip trailer=0 cmd="gzip -dc" ;;
fd377a585a00) fmt=xz trailer=4 cmd="xz -dc" ;;
28b52ffd*) fmt=zstd trailer=4 cmd="zstd -dc" ;;
02214c18*) fmt=lz4 trailer=4 cmd="lz4 -dc" ;;
425a68*) fmt=bzip2 trailer=4 cmd="bzip2 -dc" ;;
5d0000*) fmt=lzma trailer=4 cmd="xz -dc --format=lzma" ;;
*) die "$img: unknown compression (payload starts with $magic)" ;;
esac
command -v "${cmd%% *}" >/dev/null || die "$img is $fmt-compressed: install ${cmd%% *}"

tmp="$out.tmp.$$"
trap 'rm -f "$tmp"' EXIT
payload "$trailer" | $cmd >"$tmp" 2>/dev/null || die "$img: $fmt decompression failed"
if [ "$trailer" -ne 0 ]; then
	want=$(od -An -tu4 --endian=little -j $((offset + length - 4)) -N 4 "$img" | tr -d ' \n')
	got=$(stat -c %s "$tmp")
	[ "$got" = "$want" ] || die "$img: decompressed $got bytes, the kernel says $want"
fi
# An x86-64 ELF: magic, ELFCLASS64, little-endian, e_machine 62.
[ "$(od -An -tx1 -N 6 "$tmp" | tr -d ' \n')" = 7f454c460201 ] &&
	[ "$(od -An -tu2 --endian=little -j 18 -N 2 "$tmp" | tr -d ' \n')" = 62 ] ||
	die "$img: the payload is not an x86-64 ELF file"
mv "$tmp" "$out"
trap - EXIT
# XEN_ELFNOTE_PHYS32_ENTRY is note type 18 (0x12) from owner "Xen"; older
# readelf prints it as an unknown type.
if ! command -v readelf >/dev/null; then
	echo "extract-vmlinux: $out: ELF vmlinux ($fmt); no readelf to look for the PVH note" >&2
elif grep -qE '^[[:space:]]*Xen[[:space:]]+0x[0-9a-f]+[[:space:]]+(Unknown note type: \(0x00000012\)|.*PHYS32_ENTRY)' <<<"$(readelf -nW "$out" 2>/dev/null)"; then
	echo "extract-vmlinux: $out: ELF vmlinux ($fmt) with the PVH note" >&2
else
	echo "extract-vmlinux: $out: ELF vmlinux ($fmt) without the PVH note (CONFIG_PVH off)" >&2
fi

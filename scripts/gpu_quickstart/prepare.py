"""Build the carry folder for `train.sh` (default `.devcarry/`, which git ignores): the standard
library's `.py` files as `py311.tar.xz` (the default corpus of this machine, so the corpus
fingerprint, tokenizer and token files on the GPU machine are the ones here) and the tokenizer and
token cache of the quickstart preset's corpus (built in the user cache first if it is not there).
Run from the repository root:

    python scripts/gpu_quickstart/prepare.py [carry_dir]
"""

from __future__ import annotations

import shutil
import sys
import tarfile
from pathlib import Path

from sparsecircuits.cli.common import default_cache_dir
from sparsecircuits.data.batches import prepare_data
from sparsecircuits.data.corpus import DataConfig, corpus_fingerprint, stdlib_dir, stdlib_files
from sparsecircuits.weight_sparse.presets import get_preset


def main() -> None:
    carry = Path(sys.argv[1] if len(sys.argv) > 1 else ".devcarry")
    carry.mkdir(parents=True, exist_ok=True)
    root = stdlib_dir()
    with tarfile.open(carry / "py311.tar.xz", "w:xz") as tar:
        for f in stdlib_files():
            tar.add(f, arcname=str(f.relative_to(root)))
    cfg = DataConfig(**get_preset("quickstart").data)
    cache = default_cache_dir()
    data = prepare_data(cfg, cache)  # reuses the cache (tokenizes the corpus once if it is empty)
    corpus_fp = corpus_fingerprint(cfg)
    for sub, files in (("tokens", sorted((cache / "tokens").glob(data.fingerprint + ".*"))),
                       ("tokenizers", sorted((cache / "tokenizers").glob(corpus_fp + "-*.json")))):
        (carry / "cache" / sub).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy2(f, carry / "cache" / sub / f.name)
    fp = data.fingerprint
    sys.stdout.write(f"{carry}: {len(stdlib_files())} stdlib files, corpus {corpus_fp[:8]}, tokens {fp[:8]}\n")


if __name__ == "__main__":
    main()

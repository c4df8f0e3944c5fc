"""Byte-level BPE tokenizers (GPT-2 style) trained with the `tokenizers` library.

The tokenizer has the 256 byte symbols as its base alphabet, so every string encodes without
unknown tokens, and one special token, `EOT`, which separates documents. Decode with
``skip_special_tokens=False`` to get back exactly the encoded string:
``tok.decode(tok.encode(s).ids, skip_special_tokens=False) == s`` for any string without lone
surrogates (those cannot be UTF-8 encoded at all).

Footgun: by default ``tok.encode`` turns the literal text ``"<|endoftext|>"`` into the EOT token.
Data preparation must not (a document quoting it is not two documents): use `plain_text_encoder`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from sparsecircuits.atomic import atomic_write_text
from sparsecircuits.data.corpus import EOT


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE with `vocab_size` tokens (256 bytes + EOT + merges).

    Deterministic for the same texts. Fewer tokens result when the texts have too few distinct
    pairs to merge; the model's vocabulary may be larger than the tokenizer's.
    """
    if not 258 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be in [258, 65535], got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,  # library code never draws to the terminal
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok: Tokenizer, path: Path) -> None:
    """Write `tok` as JSON to `path` atomically (a temp file, then rename); creates the folder."""
    atomic_write_text(Path(path), tok.to_str())


def load_tokenizer(path: Path) -> Tokenizer:
    """Read a tokenizer JSON file written by `save_tokenizer` (or any `tokenizers` JSON)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        return Tokenizer.from_str(path.read_text(encoding="utf-8"))
    except Exception as e:  # the Rust side raises a bare Exception for malformed JSON
        raise ValueError(f"{path}: not a valid tokenizer file ({e})") from None


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    """Hex sha256 of the tokenizer's JSON serialisation."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    """Id of the end-of-text token; ValueError if the tokenizer has none."""
    tid = tok.token_to_id(EOT)
    if tid is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return tid


def plain_text_encoder(tok: Tokenizer) -> Tokenizer:
    """A copy of `tok` that encodes special-token text (like ``"<|endoftext|>"``) as ordinary
    bytes, for tokenizing documents; the copy has the same fingerprint."""
    copy = Tokenizer.from_str(tok.to_str())
    copy.encode_special_tokens = True
    return copy

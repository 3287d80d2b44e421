"""`--tokenizer {train,PATH}`: a byte-level BPE trained here, or a local tokenizer folder.

Either way the result is a `transformers.PreTrainedTokenizerFast` with `<bos>`/`<eos>`/`<pad>`
(or the folder's own special tokens), `padding_side="left"` (batched generation), and a
post-processor that puts BOS in front of every encoded text, so `tokenizer.save_pretrained(d)`
then `AutoTokenizer.from_pretrained(d)` gives back the same ids and `model.generate(**tok(text))`
starts as training rows do. EOS is not appended by the post-processor: a prompt encoded for
generation must not end with EOS; the packer appends it after every answer itself. (The trainer
and evaluators encode with `add_special_tokens=False` and place BOS/EOS explicitly.)

Byte-level BPE (GPT-2's scheme): text is split into bytes mapped to 256 printable symbols, so no
input is ever unknown, and merges are learnt from the training text up to `vocab_size`
(default 32768, the 25M design's vocabulary; a small corpus may stop below it).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from ..tokenizer import BOS, EOS, PAD

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "load_tokenizer",
    "tokenizer_fingerprint",
    "train_bpe",
]

DEFAULT_VOCAB_SIZE = 32768
_MIN_VOCAB = 256 + 3  # every byte plus pad/bos/eos
_EOS_NAMES = ("<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>")
_BOS_NAMES = ("<bos>", "<s>", "<|begin_of_text|>", "<|endoftext|>")
_PAD_NAMES = ("<pad>", "[PAD]", "<|pad|>")


def _wrap(backend: Tokenizer, bos: str, eos: str, pad: str) -> PreTrainedTokenizerFast:
    """The fast tokenizer around `backend`, with a BOS-prefixing post-processor."""
    bos_id = backend.token_to_id(bos)
    template = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    # keep a byte-level offset fixer, replace any BOS/EOS template already there (a reloaded
    # tokenizer of ours, or a Llama-style one) so BOS is never added twice
    old = json.loads(backend.to_str()).get("post_processor") or {}
    if "ByteLevel" in json.dumps(old):
        template = processors.Sequence([processors.ByteLevel(trim_offsets=False), template])
    backend.post_processor = template
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE
) -> PreTrainedTokenizerFast:
    """Learn a byte-level BPE of at most `vocab_size` ids on `texts` (ids 0-2: pad, bos, eos)."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be an int >= {_MIN_VOCAB}, got {vocab_size!r}")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    return _wrap(backend, BOS, EOS, PAD)


def _configured_specials(folder: Path) -> dict[str, str]:
    """bos/eos/pad named in special_tokens_map.json or tokenizer_config.json, if any."""
    found: dict[str, str] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"--tokenizer {folder}: {name} is not valid JSON ({exc})") from None
        for role in ("bos", "eos", "pad"):
            value = config.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str) and value:
                found[role] = value
    return found


def _read_backend(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return Tokenizer.from_file(str(folder / "tokenizer.json"))
    vocab, merges = folder / "vocab.json", folder / "merges.txt"
    if vocab.is_file() and merges.is_file():
        backend = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        backend.post_processor = processors.ByteLevel(trim_offsets=False)
        return backend
    raise ValueError(
        f"--tokenizer {folder}: not a tokenizer folder (needs tokenizer.json, or vocab.json "
        "and merges.txt)"
    )


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """A local tokenizer folder (`tokenizer.json`, or GPT-2 style `vocab.json` + `merges.txt`).

    Special tokens come from the folder's config files, else from well-known names in the
    vocabulary (GPT-2's `<|endoftext|>` serves as bos, eos and pad); a missing EOS is added as
    `<eos>` (one more id), a missing BOS falls back to EOS, a missing pad to EOS. Any folder
    that is not a tokenizer raises ValueError naming it.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise ValueError(f"--tokenizer {folder}: not a directory (use 'train' or a folder)")
    try:
        backend = _read_backend(folder)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exceptions on bad files
        detail = " ".join(str(exc).split())[:200]
        raise ValueError(f"--tokenizer {folder}: cannot read the tokenizer ({detail})") from None
    vocab = backend.get_vocab(with_added_tokens=True)
    roles = _configured_specials(folder)

    def known(names: tuple[str, ...]) -> str | None:
        return next((n for n in names if n in vocab), None)

    eos = roles.get("eos") or known(_EOS_NAMES)
    if eos is None or eos not in vocab:
        eos = EOS
        backend.add_special_tokens([EOS])
    bos = roles.get("bos") or known(_BOS_NAMES) or eos
    pad = roles.get("pad") or known(_PAD_NAMES) or eos
    missing = [t for t in (bos, pad) if backend.token_to_id(t) is None]
    if missing:
        backend.add_special_tokens(missing)
    return _wrap(backend, bos, eos, pad)


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerFast) -> str:
    """sha256 of the tokenizer's full definition and special ids: part of the cache key."""
    h = hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8"))
    ids = (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    h.update(repr(ids).encode())
    return h.hexdigest()

"""A deterministic character-level tokenizer for the built-in curriculum.

Why characters: every built-in task is short ASCII text whose answer is judged by exact match, so one
token per character keeps the label boundary between prompt and answer exact, keeps the vocabulary
tiny (100 ids, so the embedding and LM head stay small for CPU runs) and needs no download or
training. It is built with the `tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, so
`tokenizer.save_pretrained(dir)` followed by `AutoTokenizer.from_pretrained(dir)` gives back the
same ids offline.

Vocabulary (ids are fixed): 0 `<pad>`, 1 `<bos>`, 2 `<eos>`, 3 `<unk>`, then the 95 printable ASCII
characters (space .. `~`) in code-point order, then newline. Any other character maps to `<unk>`.
No post-processor: callers add `<bos>`/`<eos>` themselves (see `cognate_train.data.encode`).
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
CHARACTERS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def build_vocab() -> dict[str, int]:
    """The fixed token -> id map: special tokens first (pad is id 0), then the characters."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (deterministic: same ids on every machine and run).

    Every character becomes one pre-token (a regex split on any single character, newline
    included), the word-level model looks each one up (unknown -> `<unk>`), and the `Fuse` decoder
    concatenates tokens back without spaces, so `decode(encode(s)) == s` for printable ASCII `s`.
    """
    backend = Tokenizer(models.WordLevel(build_vocab(), unk_token=UNK))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="right",
        model_input_names=["input_ids", "attention_mask"],
    )

"""A deterministic character-level tokenizer for the built-in curriculum.

Why characters: every built-in task is short ASCII text whose answer is judged by exact match, so one
token per character keeps the label boundary between prompt and answer exact, keeps the vocabulary
tiny (356 ids, so the embedding and LM head stay small for CPU runs) and needs no download or
training. It is built with the `tokenizers` library and wrapped as a `PreTrainedTokenizerFast`, so
`tokenizer.save_pretrained(dir)` followed by `AutoTokenizer.from_pretrained(dir)` gives back the
same ids offline.

Vocabulary (ids are fixed): 0 `<pad>`, 1 `<bos>`, 2 `<eos>`, 3 `<unk>`, then the 95 printable ASCII
characters (space .. `~`) in code-point order, then newline (ids 4-99), then the 256 byte tokens
`<0x00>` .. `<0xFF>` (ids 100-355). Any other character (non-ASCII text, a tab) becomes the byte
tokens of its UTF-8 encoding (byte fallback, as in Llama's tokenizer), so no input is ever
`<unk>` and `decode(encode(s)) == s` for every string. The built-in curriculum is ASCII, so a
trained model has never seen a byte token: it reads them, but they mean nothing to it.

What `tokenizer(text)` adds, as the model was trained (`cognate_train.data.encode`):
`<bos> text` for one text and `<bos> a b <eos>` for a pair (prompt, answer: a training row),
through the tokenizer's post-processor, so `AutoTokenizer` + `model.generate(**tok(prompts))`
start exactly as the CLI's own generation does. Padding is on the left, as batched generation
needs (the model reads positions from the attention mask). The trainer and evaluators encode
with `add_special_tokens=False` and place `<bos>`/`<eos>` themselves.
"""

from __future__ import annotations

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
CHARACTERS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n",)
BYTE_TOKENS: tuple[str, ...] = tuple(f"<0x{b:02X}>" for b in range(256))


def build_vocab() -> dict[str, int]:
    """The fixed token -> id map: special tokens (pad is id 0), characters, then byte tokens."""
    return {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS + BYTE_TOKENS)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Build the character-level tokenizer (deterministic: same ids on every machine and run).

    Every character becomes one pre-token (a regex split on any single character, newline
    included). The model is a BPE without merges, so a pre-token is looked up whole; one that is
    not in the vocabulary falls back to its UTF-8 bytes. The decoder turns byte tokens back into
    text (`ByteFallback`) and concatenates without spaces (`Fuse`).
    """
    vocab = build_vocab()
    backend = Tokenizer(models.BPE(vocab, [], unk_token=UNK, byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B {EOS}",
        special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])],
    )
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_input_names=["input_ids", "attention_mask"],
    )

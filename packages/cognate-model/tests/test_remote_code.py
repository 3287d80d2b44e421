"""save_pretrained writes auto_map and the model's source files, so a fresh process that never
imports `cognate_model` loads the model (and a text-generation pipeline) with
`trust_remote_code=True` and gets the same logits and tokens as the original."""

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

FILES = {
    "attention.py",
    "cache.py",
    "configuration_cognate.py",
    "heads.py",
    "memory.py",
    "modeling_cognate.py",
    "recursion.py",
    "titans.py",
}


def _tokenizer(directory: Path) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here on generated text (no network, no datasets)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    text = [f"{a} plus {b} is {a + b}." for a in range(30) for b in range(30)]
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=300,
            special_tokens=["<eos>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")
    fast.save_pretrained(directory)
    return fast


def test_saved_directory_is_self_contained(tmp_path, make_tiny):
    make_tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_cognate.CognateConfig",
        "AutoModelForCausalLM": "modeling_cognate.CognateForCausalLM",
    }
    assert FILES <= {p.name for p in tmp_path.iterdir()}
    for name in FILES:  # only relative imports among the copied files, no cognate_model
        tree = ast.parse((tmp_path / name).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert f"{node.module}.py" in FILES, (name, node.module)
            names = [a.name for a in getattr(node, "names", [])]
            module = getattr(node, "module", None) or ""
            assert not any(n.startswith("cognate") for n in [module, *names]), name


def test_fresh_process_loads_with_trust_remote_code(tmp_path, make_tiny):
    model = make_tiny(vocab_size=300, eos_token_id=0, pad_token_id=0)
    model.save_pretrained(tmp_path)
    tokenizer = _tokenizer(tmp_path)
    prompt = "12 plus 7 is"
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    expected_logits = model(ids).logits
    expected = model.generate(ids, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    torch.save({"ids": ids, "logits": expected_logits, "tokens": expected}, tmp_path / "ref.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM, pipeline
        d = {str(tmp_path)!r}
        ref = torch.load(d + "/ref.pt", weights_only=True)
        model = AutoModelForCausalLM.from_pretrained(d, trust_remote_code=True).eval()
        assert type(model).__name__ == "CognateForCausalLM", type(model)
        assert "transformers_modules" in type(model).__module__, type(model).__module__
        torch.testing.assert_close(model(ref["ids"]).logits, ref["logits"], rtol=0, atol=1e-6)
        out = model.generate(ref["ids"], max_new_tokens=6, do_sample=False, min_new_tokens=6)
        assert torch.equal(out, ref["tokens"]), (out, ref["tokens"])
        pipe = pipeline("text-generation", model=d, trust_remote_code=True, device="cpu")
        text = pipe({prompt!r}, max_new_tokens=6, min_new_tokens=6, do_sample=False)
        text = text[0]["generated_text"]
        assert text == pipe.tokenizer.decode(ref["tokens"][0]), text
        leaked = [m for m in sys.modules if m.startswith("cognate")]
        assert not leaked, leaked
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("OK"), done.stderr[-3000:]

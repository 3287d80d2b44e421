"""transformers.Trainer trains a tiny Cognate model (gradient accumulation 1 and 2).

The data is generated here: each row is an arithmetic progression modulo the vocabulary
(start and step random), so the next token is predictable from the two before it and the
loss must fall within a few dozen steps.
"""

import pytest
import torch
from cognate_model import CognateConfig, CognateForCausalLM
from transformers import Trainer, TrainingArguments

pytest.importorskip("accelerate")

VOCAB, SEQ = 32, 24


class Progressions(torch.utils.data.Dataset):
    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        step = torch.randint(1, 4, (n, 1), generator=g)
        self.ids = (start + step * torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _train(tmp_path, accum: int, max_steps: int = 25) -> tuple[list[float], Trainer]:
    torch.manual_seed(0)
    config = CognateConfig.from_preset(
        "cognate-tiny",
        vocab_size=VOCAB,
        d_model=32,
        d_ff=64,
        max_seq_len=SEQ,
        window_size=8,
        trm_cycles=2,
        trm_micro_steps=1,
    )
    model = CognateForCausalLM(config)
    args = TrainingArguments(
        output_dir=str(tmp_path / f"accum{accum}"),
        per_device_train_batch_size=16 // accum,
        gradient_accumulation_steps=accum,
        max_steps=max_steps,
        learning_rate=1e-2,
        warmup_steps=0,
        logging_steps=5,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    trainer = Trainer(model=model, args=args, train_dataset=Progressions(16 * max_steps))
    trainer.train()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return losses, trainer


@pytest.mark.parametrize("accum", [1, 2])
def test_trainer_trains_and_loss_falls(tmp_path, accum):
    losses, trainer = _train(tmp_path, accum)
    assert trainer.model_accepts_loss_kwargs  # num_items_in_batch reaches our forward
    assert len(losses) == 5
    assert losses[-1] < 0.6 * losses[0], losses


def test_accumulation_matches_one_big_batch(tmp_path):
    """With num_items_in_batch the first logged losses of accum 1 (16 rows) and accum 2
    (2 x 8 rows, same rows) agree: the micro-batch losses add up to the batch's loss."""
    one, _ = _train(tmp_path, 1, max_steps=5)
    two, _ = _train(tmp_path, 2, max_steps=5)
    assert one[0] == pytest.approx(two[0], rel=2e-2)

"""TRM deep supervision in the trainer: the detached (y, z) carried across a batch's supervision
steps (against the model called by hand), reset on a new batch, early exit on the halting head,
and the carry in the task's checkpoint state."""

import pytest
import torch
from cognate_train.config import build_config
from cognate_train.trainer import CurriculumTask


def _task(steps: int, early_exit: bool = False, accum: int = 1) -> CurriculumTask:
    cfg = build_config(
        "train",
        "smoke",
        None,
        {"steps_per_batch": steps, "supervision_early_exit": early_exit, "grad_accum": accum},
    )
    task = CurriculumTask(cfg, "reasoning", torch.device("cpu"))
    task.model.double()
    return task


def _call(model, mb, state=None):
    return model(
        input_ids=mb["input_ids"],
        attention_mask=mb["attention_mask"],
        labels=mb["labels"],
        recursion_state=state,
    )


def test_carry_equals_the_manual_two_steps_and_resets_on_a_new_batch(single_thread):
    task = _task(steps=2, accum=2)
    model = task.model.train()
    first = task.batches(0)
    assert len(first) == 2
    losses = [task.loss(mb)[0] for mb in first]
    manual = [_call(model, mb) for mb in first]
    for got, ref in zip(losses, manual, strict=True):
        torch.testing.assert_close(got, ref.loss, rtol=0, atol=0)
    assert task.batches(1) is first  # the same batch: its second supervision step
    for mb, ref in zip(first, manual, strict=True):
        got = task.loss(mb)[0]
        torch.testing.assert_close(got, _call(model, mb, ref.recursion_state).loss, rtol=0, atol=0)
        assert not torch.allclose(got, ref.loss)  # the carry changed the start state
    second = task.batches(2)
    assert second is not first
    got = task.loss(second[0])[0]
    torch.testing.assert_close(got, _call(model, second[0]).loss, rtol=0, atol=0)


@pytest.mark.parametrize(("bias", "expect_new"), [(30.0, True), (-30.0, False)])
def test_early_exit_leaves_a_batch_when_the_head_says_halt(single_thread, bias, expect_new):
    task = _task(steps=3, early_exit=True)
    with torch.no_grad():
        task.model.recursion.act_head.proj.bias.fill_(bias)
    first = task.batches(0)
    task.loss(first[0])
    assert (task.batches(1) is not first) == expect_new


def test_without_early_exit_a_halting_head_changes_nothing(single_thread):
    task = _task(steps=3)
    with torch.no_grad():
        task.model.recursion.act_head.proj.bias.fill_(30.0)
    first = task.batches(0)
    for step in range(1, 3):
        task.loss(first[0])
        assert task.batches(step) is first
    task.loss(first[0])
    assert task.batches(3) is not first


def test_carry_round_trips_through_the_task_state(single_thread):
    """A task restored from a mid-batch state redraws the same batch and continues from the
    same (y, z): its next loss equals the original task's."""
    a = _task(steps=3)
    mb = a.batches(0)[0]
    a.loss(mb)
    state = a.state_dict()
    b = _task(steps=3)
    b.model.load_state_dict(a.model.state_dict())
    b.load_state_dict(state, step=1)
    nxt_a, nxt_b = a.batches(1), b.batches(1)
    for x, y in zip(nxt_a, nxt_b, strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    torch.testing.assert_close(b.loss(nxt_b[0])[0], a.loss(nxt_a[0])[0], rtol=0, atol=0)
    assert a.state_dict()["supervision_step"] == b.state_dict()["supervision_step"] == 2

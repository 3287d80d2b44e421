"""CheckpointManager: atomic writes, manifests, damage detection, fallback, rotation."""

from __future__ import annotations

import pytest
import torch
from cognate_train import checkpoints as ck

FP = {"kind": "train", "model_preset": "cognate-tiny"}


def writer(payload: bytes):
    def write(d):
        (d / "model.safetensors").write_bytes(payload)
        ck.save_torch_state(
            d, {"optimizer": {"state": {0: {"exp_avg": torch.arange(3.0)}}, "param_groups": []}}
        )

    return write


def test_manifest_checksums_every_file(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, 2, FP)
    path = mgr.save(5, writer(b"abc"))
    assert path.name == "step-000005"
    manifest = ck.verify(path)
    assert manifest["step"] == 5 and manifest["fingerprint"] == FP
    import hashlib

    assert manifest["files"]["model.safetensors"] == {
        "sha256": hashlib.sha256(b"abc").hexdigest(),
        "bytes": 3,
    }
    assert set(manifest["files"]) == {"model.safetensors", "state.pt"}
    # the torch state loads with weights_only=True
    assert torch.equal(
        ck.load_torch_state(path)["optimizer"]["state"][0]["exp_avg"], torch.arange(3.0)
    )


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda d: (d / "model.safetensors").write_bytes(b"abd"),
            "model.safetensors checksum mismatch",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b"ab"), "model.safetensors has 2 bytes"),
        (lambda d: (d / "state.pt").unlink(), "state.pt is missing"),
        (lambda d: (d / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda d: (d / "manifest.json").write_text("{"), "manifest.json is unreadable"),
    ],
)
def test_damage_is_detected_and_named_then_older_one_used(tmp_path, damage, message):
    mgr = ck.CheckpointManager(tmp_path, 3, FP)
    mgr.save(10, writer(b"old"))
    newest = mgr.save(20, writer(b"new"))
    damage(newest)
    with pytest.raises(ck.CheckpointError, match="step-000020 is damaged"):
        ck.verify(newest)
    warnings = []
    assert mgr.latest_intact(warnings.append) == tmp_path / "checkpoints" / "step-000010"
    assert len(warnings) == 1 and message in warnings[0] and "step-000020" in warnings[0]
    assert newest.is_dir()  # never deleted


def test_no_intact_checkpoint_raises_naming_them(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, 3, FP)
    for step in (1, 2):
        (mgr.save(step, writer(b"x")) / "model.safetensors").write_bytes(b"y")
    with pytest.raises(ck.CheckpointError, match="no intact checkpoint.*step-000002, step-000001"):
        mgr.latest_intact(lambda m: None)
    assert ck.CheckpointManager(tmp_path / "empty", 3, FP).latest_intact(lambda m: None) is None


def test_rotation_keeps_last_k_and_leaves_damaged_alone(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, 2, FP)
    first = mgr.save(1, writer(b"1"))
    (first / "manifest.json").unlink()  # damaged: rotation must not count or delete it
    for step in (2, 3, 4):
        mgr.save(step, writer(str(step).encode()))
    names = sorted(p.name for p in mgr.dir.iterdir())
    assert names == ["step-000001", "step-000003", "step-000004"]


def test_partial_write_is_invisible_and_cleaned(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, 2, FP)
    mgr.save(1, writer(b"1"))

    def dies(d):
        (d / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt  # killed mid-write

    with pytest.raises(KeyboardInterrupt):
        mgr.save(2, dies)
    assert [s for s, _ in mgr.step_dirs()] == [1]  # the half-written one has no final name
    assert any(p.name.startswith(".tmp-") for p in mgr.dir.iterdir())
    mgr.cleanup_partial()
    assert [p.name for p in mgr.dir.iterdir()] == ["step-000001"]


def test_named_checkpoint_is_replaced_atomically(tmp_path):
    mgr = ck.CheckpointManager(tmp_path, 2, FP)
    mgr.save_named("best", 1, writer(b"first"))
    mgr.save_named("best", 2, writer(b"second"))
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"second"
    assert ck.verify(tmp_path / "best")["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_incompatible_fingerprint_is_refused(tmp_path):
    ck.CheckpointManager(tmp_path, 2, FP).save(1, writer(b"1"))
    other = ck.CheckpointManager(tmp_path, 2, {**FP, "model_preset": "cognate-25m"})
    with pytest.raises(
        ck.CheckpointError, match="incompatible run.*model_preset 'cognate-tiny' != 'cognate-25m'"
    ):
        other.check_compatible(tmp_path / "checkpoints" / "step-000001")

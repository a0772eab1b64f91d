import pytest
import torch

from fedunlearn import checkpoint
from fedunlearn.errors import CheckpointError


def test_roundtrip_and_meta(tmp_path):
    path = checkpoint.save(tmp_path / "m", {"w": torch.arange(4.0)}, {"wall_s": 1.5})
    obj, meta = checkpoint.load(path)
    assert torch.equal(obj["w"], torch.arange(4.0)) and meta == {"wall_s": 1.5}


def test_corruption_is_detected_and_never_used(tmp_path):
    path = checkpoint.save(tmp_path / "m", {"w": torch.zeros(100)})
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        checkpoint.load(path)
    assert checkpoint.load_or_none(path) is None  # resume treats it as missing and rebuilds


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        checkpoint.load(tmp_path / "nothing")
    assert checkpoint.load_or_none(tmp_path / "nothing") is None

import json

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


def test_sidecar_is_part_of_the_checksum(tmp_path):
    path = checkpoint.save(tmp_path / "m", {"w": torch.ones(3)}, {"wall_s": 2.0, "stats": {"steps": 5}})
    side = path.with_suffix(".json")
    record = json.loads(side.read_text())
    record["meta"]["wall_s"] = 0.01  # an edited time would change every reported speedup
    side.write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="does not match its checksum"):
        checkpoint.load(path)
    assert checkpoint.load_or_none(path) is None


@pytest.mark.parametrize("flip", [0xFF, 0x01])
def test_flipped_sidecar_byte_is_rebuilt_not_a_crash(tmp_path, flip):
    path = checkpoint.save(tmp_path / "m", {"w": torch.ones(3)}, {"wall_s": 2.0})
    side = path.with_suffix(".json")
    data = bytearray(side.read_bytes())
    data[len(data) // 2] ^= flip  # 0xFF: invalid UTF-8; 0x01: still text, different content
    side.write_bytes(bytes(data))
    with pytest.raises(CheckpointError):
        checkpoint.load(path)
    assert checkpoint.load_or_none(path) is None

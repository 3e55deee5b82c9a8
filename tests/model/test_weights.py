"""Safe checkpoint I/O: weights-only pickles, streamed safetensors writing, header checks, clear errors."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from vincie_cli.model.weights import (
    SafetensorsReader,
    TensorSpec,
    load_torch_state_dict,
    read_safetensors_header,
    safetensors_header_digest,
    save_state_dict,
    write_safetensors,
)
from vincie_cli.utils.io import BadInputError


def _sd():
    g = torch.Generator().manual_seed(0)
    return {
        "a.weight": torch.randn(3, 5, generator=g),
        "b.bf16": torch.randn(7, generator=g).bfloat16(),
        "c.ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "d.flag": torch.tensor([True, False, True]),
        "e.scalar": torch.tensor(2.5),
        "f.empty": torch.zeros(0, 4),
    }


def test_streamed_safetensors_roundtrip_and_hash(tmp_path):
    sd = _sd()
    path = tmp_path / "x.safetensors"
    digest = save_state_dict(path, sd, metadata={"format": "pt"})
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    back = load_file(str(path))  # the reference reader accepts our files
    assert set(back) == set(sd)
    for k, v in sd.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    r = SafetensorsReader(path)
    assert r.metadata == {"format": "pt"}
    assert [s.name for s in r.specs()] == list(sd)
    assert {s.name: s.shape for s in r.specs()}["a.weight"] == (3, 5)
    assert torch.equal(r["c.ids"], sd["c.ids"])


def test_streamed_writer_casts_and_keeps_selected_dtypes(tmp_path):
    sd = {"w": torch.randn(4, 4), "rope.rope.freqs": torch.rand(3), "ids": torch.arange(3)}
    path = tmp_path / "y.safetensors"
    save_state_dict(path, sd, torch.bfloat16, keep_dtype=lambda k: k.endswith("freqs"))
    back = load_file(str(path))
    assert back["w"].dtype == torch.bfloat16 and torch.equal(back["w"], sd["w"].bfloat16())
    assert back["rope.rope.freqs"].dtype == torch.float32 and torch.equal(
        back["rope.rope.freqs"], sd["rope.rope.freqs"]
    )
    assert back["ids"].dtype == torch.int64


def test_writer_checks_shapes(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        write_safetensors(
            tmp_path / "z.safetensors", [TensorSpec("a", (2, 2), torch.float32)], lambda n: torch.zeros(3)
        )


def test_safetensors_corrupt_truncated_and_header_digest(tmp_path):
    good = tmp_path / "good.safetensors"
    save_file({"a": torch.randn(64, 64)}, str(good))
    data = good.read_bytes()
    trunc = tmp_path / "trunc.safetensors"
    trunc.write_bytes(data[: len(data) - 100])
    with pytest.raises(BadInputError, match="trunc.safetensors: truncated"):
        SafetensorsReader(trunc)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!" + b"0" * 64)
    with pytest.raises(BadInputError, match="junk.safetensors: corrupt"):
        read_safetensors_header(junk)
    tiny = tmp_path / "tiny.safetensors"
    tiny.write_bytes(b"abc")
    with pytest.raises(BadInputError, match="no header"):
        read_safetensors_header(tiny)
    # header digest: same for identical files, different when a name or shape changes
    other = tmp_path / "other.safetensors"
    save_file({"b": torch.randn(64, 64)}, str(other))
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(data)
    assert safetensors_header_digest(good) == safetensors_header_digest(copy)
    assert safetensors_header_digest(good) != safetensors_header_digest(other)


def test_torch_pickles_weights_only(tmp_path):
    sd = {"x": torch.randn(4), "y": torch.ones(2, 2)}
    p = tmp_path / "ok.pth"
    torch.save(sd, p)
    back = load_torch_state_dict(p)
    assert set(back) == {"x", "y"} and torch.equal(back["x"], sd["x"])
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"state_dict": sd, "epoch": 3}, wrapped)
    assert set(load_torch_state_dict(wrapped)) == {"x", "y"}
    legacy = tmp_path / "legacy.pth"
    torch.save(sd, legacy, _use_new_zipfile_serialization=False)
    assert torch.equal(load_torch_state_dict(legacy)["y"], sd["y"])


def test_torch_pickle_errors(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"x": torch.randn(1000)}, good)
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:500])
    with pytest.raises(BadInputError, match=r"trunc\.pth: corrupt or truncated checkpoint"):
        load_torch_state_dict(trunc)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint" * 20)
    with pytest.raises(BadInputError, match=r"junk\.pth: corrupt or truncated checkpoint"):
        load_torch_state_dict(junk)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    with pytest.raises(BadInputError, match="empty file"):
        load_torch_state_dict(empty)
    with pytest.raises(BadInputError, match="no such checkpoint file"):
        load_torch_state_dict(tmp_path / "absent.pth")
    mixed = tmp_path / "mixed.pth"
    torch.save({"x": torch.ones(1), "step": 5, "name": "abc"}, mixed)
    with pytest.raises(BadInputError, match=r"non-tensor entries step \(int\), name \(str\)"):
        load_torch_state_dict(mixed)


class _Payload:
    """Unpickling this would run code (create a marker file); weights_only must refuse it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_with_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        torch.save({"x": torch.ones(1), "obj": _Payload(str(marker))}, f, pickle_module=pickle)
    with pytest.raises(BadInputError, match=r"evil\.pth: refused: the pickle holds objects other than tensors"):
        load_torch_state_dict(evil)
    assert not marker.exists()


def test_file_pages_release_keeps_values(tmp_path):
    from vincie_cli.model.weights import FilePages

    sd = {"a": torch.randn(512, 512), "b": torch.randn(300)}
    p = tmp_path / "m.pth"
    torch.save(sd, p)
    mapped = load_torch_state_dict(p)  # mmap'd
    pages = FilePages(p)
    assert pages.ranges, "the checkpoint should show up as a file mapping"
    for t in mapped.values():
        pages.release(t)
    assert all(torch.equal(mapped[k], v) for k, v in sd.items())  # re-read from the file
    anon = torch.randn(1000)
    copy = anon.clone()
    pages.release(anon)  # not inside the mapping: untouched
    assert torch.equal(anon, copy)

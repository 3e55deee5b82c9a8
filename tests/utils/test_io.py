import json
import multiprocessing as mp

import pytest

from vincie_cli.utils.io import (
    BadInputError,
    DirLock,
    UsageError,
    VincieError,
    append_jsonl,
    atomic_path,
    atomic_write_json,
    in_shard,
    parse_shard,
    read_jsonl,
    repair_jsonl_tail,
)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("crash")
    assert json.loads(target.read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_jsonl_torn_tail_is_skipped_and_repaired(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as f:
        f.write('{"a": 2, "b"')  # a crash mid-line
    assert list(read_jsonl(p)) == [{"a": 1}]
    with pytest.raises(BadInputError, match="r.jsonl:2"):
        list(read_jsonl(p, strict=True))
    append_jsonl(p, {"a": 3})
    # the torn line is now in the middle: reported, not silently skipped
    with pytest.raises(BadInputError, match="r.jsonl:2: not valid JSON"):
        list(read_jsonl(p))


def test_read_jsonl_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="no such file"):
        list(read_jsonl(tmp_path / "nope.jsonl"))


def _try_lock(path, q):
    try:
        with DirLock(path):
            q.put("got")
    except VincieError as e:
        q.put(str(e))


def test_dir_lock_refuses_second_process(tmp_path):
    with DirLock(tmp_path):
        q = mp.get_context("fork").Queue()
        p = mp.get_context("fork").Process(target=_try_lock, args=(tmp_path, q))
        p.start()
        p.join()
        assert "another process" in q.get()
    # released: now it works
    q = mp.get_context("fork").Queue()
    p = mp.get_context("fork").Process(target=_try_lock, args=(tmp_path, q))
    p.start()
    p.join()
    assert q.get() == "got"


def test_shards_partition_keys():
    assert parse_shard(None) == (0, 1)
    assert parse_shard("2/4") == (2, 4)
    for bad in ("4/4", "x/2", "1", "-1/3"):
        with pytest.raises(UsageError):
            parse_shard(bad)
    keys = [f"video{i}.mp4" for i in range(200)]
    owners = [[k for k in keys if in_shard(k, (i, 3))] for i in range(3)]
    assert sorted(sum(owners, [])) == sorted(keys)
    assert all(len(o) > 40 for o in owners)


def test_atomic_write_uses_normal_file_mode(tmp_path):
    import os

    target = tmp_path / "m.json"
    atomic_write_json(target, {})
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_repair_jsonl_tail_before_append(tmp_path):
    p = tmp_path / "r.jsonl"
    append_jsonl(p, {"a": 1})
    with open(p, "a") as f:
        f.write('{"a": 2')
    assert repair_jsonl_tail(p) is True
    append_jsonl(p, {"a": 3})
    assert list(read_jsonl(p, strict=True)) == [{"a": 1}, {"a": 3}]
    assert repair_jsonl_tail(p) is False


def test_cached_sha256_rehashes_changed_files(tmp_path, monkeypatch):
    import hashlib
    import os

    from vincie_cli.utils import io

    monkeypatch.setenv("VINCIE_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"abc")
    assert io.cached_sha256_file(f) == hashlib.sha256(b"abc").hexdigest()
    calls = []
    monkeypatch.setattr(io, "sha256_file", lambda p: calls.append(p) or "x")
    assert io.cached_sha256_file(f) == hashlib.sha256(b"abc").hexdigest() and calls == []
    f.write_bytes(b"abcd")
    os.utime(f, ns=(1, 1))
    assert io.cached_sha256_file(f) == "x" and len(calls) == 1

import io
import json
import tarfile

import numpy as np
import pytest

from tests.sessions.helpers import write_clips
from vincie_cli.sessions import Session, SessionDataset
from vincie_cli.sessions.build import BuildOptions, SessionBuilder
from vincie_cli.utils.io import BadInputError, UsageError

N = 12


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """N sessions in many small shards ("many") and the same in one shard ("one")."""
    root = tmp_path_factory.mktemp("sessions")
    write_clips(root / "seg", n_clips=N, n_frames=2, size=(16, 8), masks=True)
    opts = dict(image_format="png", val_fraction=0.0)
    SessionBuilder(root / "many", BuildOptions(shard_size_mb=0.001, **opts)).run([str(root / "seg")])
    SessionBuilder(root / "one", BuildOptions(**opts)).run([str(root / "seg")])
    return root


def keys(iterable):
    return [s.key for s in iterable]


def test_many_shards_exist(built):
    assert len(list((built / "many").glob("*.tar"))) >= 6
    assert len(list((built / "one").glob("*.tar"))) == 1
    ds = SessionDataset([str(built / "many")])
    assert ds.num_sessions() == N and len(set(keys(ds))) == N


@pytest.mark.parametrize("folder", ["many", "one"])  # shard-level and sample-level splitting
@pytest.mark.parametrize("world_size,workers", [(1, 2), (2, 0), (2, 2), (3, 1)])
def test_ranks_and_workers_split_without_duplicates_or_loss(built, folder, world_size, workers):
    seen = []
    for rank in range(world_size):
        ds = SessionDataset([str(built / folder)], rank=rank, world_size=world_size)
        for batch in ds.loader(batch_size=2, num_workers=workers):
            assert all(isinstance(s, Session) for s in batch)
            seen.extend(keys(batch))
    assert len(seen) == len(set(seen)) == N


def test_shuffle_is_deterministic_per_seed(built):
    plain = keys(SessionDataset([str(built / "many")]))
    a = keys(SessionDataset([str(built / "many")], shuffle_buffer=5, seed=1))
    b = keys(SessionDataset([str(built / "many")], shuffle_buffer=5, seed=1))
    c = keys(SessionDataset([str(built / "many")], shuffle_buffer=5, seed=2))
    assert a == b and a != plain and a != c and sorted(a) == sorted(plain) == sorted(c)


def test_loop_reshuffles_each_epoch(built):
    ds = SessionDataset([str(built / "many")], shuffle_buffer=4, seed=0, loop=True)
    it = iter(ds)
    e0 = [next(it).key for _ in range(N)]
    e1 = [next(it).key for _ in range(N)]
    assert sorted(e0) == sorted(e1) and e0 != e1


@pytest.mark.parametrize("shuffle", [0, 4])
def test_resume_in_process_is_exact(built, shuffle):
    def fresh():
        return SessionDataset([str(built / "many")], shuffle_buffer=shuffle, seed=3, loop=True)

    it = iter(fresh())
    full = [next(it).key for _ in range(30)]  # crosses two epoch boundaries
    ds = fresh()
    it = iter(ds)
    first = [next(it).key for _ in range(13)]
    state = json.loads(json.dumps(ds.state_dict()))  # a state survives JSON (checkpoints)
    ds2 = fresh()
    ds2.load_state_dict(state)
    it2 = iter(ds2)
    rest = [next(it2).key for _ in range(17)]
    assert first + rest == full


def test_resume_with_dataloader_workers_is_exact(built):
    def loader():
        ds = SessionDataset([str(built / "many")], shuffle_buffer=3, seed=5, loop=True)
        return ds, ds.loader(batch_size=2, num_workers=2)

    _, ld = loader()
    it = iter(ld)
    full = [keys(next(it)) for _ in range(10)]
    ds, ld = loader()
    it = iter(ld)
    first = [keys(next(it)) for _ in range(3)]  # workers prefetch beyond this; the state must not count that
    state = ld.state_dict()
    del it
    ds2, ld2 = loader()
    ld2.load_state_dict(state)
    it2 = iter(ld2)
    rest = [keys(next(it2)) for _ in range(7)]
    assert first + rest == full


def test_resume_refuses_a_different_setup(built):
    ds = SessionDataset([str(built / "many")], seed=1)
    next(iter(ds))
    state = ds.state_dict()
    with pytest.raises(UsageError, match="seed=1, this dataset 2"):
        SessionDataset([str(built / "many")], seed=2).load_state_dict(state)
    with pytest.raises(UsageError, match="world_size"):
        SessionDataset([str(built / "many")], seed=1, world_size=2).load_state_dict(state)
    ds2 = SessionDataset([str(built / "many")], seed=1)
    ds2.load_state_dict(state)
    with pytest.raises(UsageError, match="1 DataLoader workers per rank, this loader has 2"):
        next(iter(ds2.loader(num_workers=2)))


def test_fsspec_urls(built):
    import fsspec

    local = {s.key: s for s in SessionDataset([str(built / "many")])}
    via_file = keys(SessionDataset([f"file://{built / 'many'}"]))
    assert sorted(via_file) == sorted(local)
    fs = fsspec.filesystem("memory")
    for p in (built / "many").iterdir():
        if p.suffix in (".tar", ".json"):
            fs.pipe(f"/vincie-test/{p.name}", p.read_bytes())
    mem = list(SessionDataset(["memory://vincie-test"]))
    assert sorted(keys(mem)) == sorted(local)
    for s in mem:
        np.testing.assert_array_equal(s.frames[1], local[s.key].frames[1])
        np.testing.assert_array_equal(s.dst_masks[0], local[s.key].dst_masks[0])
    glob = keys(SessionDataset(["memory://vincie-test/train-00000[0-1].tar"]))
    assert 0 < len(glob) < N
    braces = keys(SessionDataset([f"{built / 'many'}/train-{{000000..000001}}.tar"]))
    assert sorted(glob) == sorted(braces)


def test_missing_source_and_empty_split(built, tmp_path):
    with pytest.raises(BadInputError, match="no such shard"):
        SessionDataset([str(tmp_path / "nothing.tar")])
    with pytest.raises(BadInputError, match="no shards of split 'val'"):
        SessionDataset([str(built / "many")], split="val")


def _corrupt_copy(built, tmp_path):
    import shutil

    d = tmp_path / "c"
    shutil.copytree(built / "many", d)
    shards = sorted(d.glob("*.tar"))
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2 + 100])  # truncated mid-member
    shards[2].write_bytes(b"this is not a tar file" * 40)
    return d, shards


def test_corrupt_shards_raise_or_are_skipped(built, tmp_path):
    d, shards = _corrupt_copy(built, tmp_path)
    with pytest.raises(BadInputError, match=f"{shards[1].name}: corrupt or truncated shard"):
        list(SessionDataset([str(d)]))
    got = keys(SessionDataset([str(d)], errors="skip"))
    per_shard = {r["name"]: r["sessions"] for r in json.loads((d / "index.json").read_text())["shards"]}
    intact = sum(n for name, n in per_shard.items() if name not in (shards[1].name, shards[2].name))
    assert intact <= len(got) < N and len(set(got)) == len(got)


def _tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE if kind == "link" else tarfile.DIRTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)


@pytest.mark.parametrize(
    "members,message",
    [
        ([("../evil.json", b"{}", "file")], "unsafe tar member name '../evil.json'"),
        ([("/abs/evil.json", b"{}", "file")], "unsafe tar member name '/abs/evil.json'"),
        ([("sub/evil.json", b"{}", "file")], "unsafe tar member name 'sub/evil.json'"),
        ([("evil.json", b"", "link")], "'evil.json' is a link"),
        ([("d", b"", "dir")], "'d' is a directory"),
        ([("a.json", b"{}", "file"), ("b.json", b"{}", "file"), ("a.x", b"", "file")], "not consecutive"),
        ([("a.json", b"{}", "file"), ("a.json", b"{}", "file")], "duplicate member 'a.json'"),
    ],
)
def test_unsafe_or_malformed_members_are_refused(tmp_path, members, message):
    from vincie_cli.sessions.shards import read_shard

    _tar(tmp_path / "bad.tar", members)
    with pytest.raises(BadInputError, match=message) as e:
        list(read_shard(str(tmp_path / "bad.tar")))
    assert "bad.tar" in str(e.value)
    assert not (tmp_path.parent / "evil.json").exists()


def test_dataset_refuses_an_escaping_member(tmp_path):
    _tar(tmp_path / "bad.tar", [("../x.json", b"{}", "file")])
    with pytest.raises(BadInputError, match=r"bad.tar: unsafe tar member name '../x.json' \(paths and directories"):
        list(SessionDataset([str(tmp_path / "bad.tar")], split=None))


def test_truncated_at_a_member_boundary_is_detected(built, tmp_path):
    from vincie_cli.sessions.shards import read_shard

    shard = sorted((built / "one").glob("*.tar"))[0]
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        cut = tar.getmembers()[4].offset  # header of the 5th member: a clean member boundary
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    with pytest.raises(BadInputError, match="cut.tar: corrupt or truncated shard \\(it stops before"):
        list(read_shard(str(tmp_path / "cut.tar")))


def test_shards_read_with_webdataset(built):
    import webdataset as wds

    url = str(sorted((built / "one").glob("*.tar"))[0])
    samples = list(wds.WebDataset(url, shardshuffle=False))
    assert len(samples) == N
    ours = {s.key: s for s in SessionDataset([str(built / "one")])}
    for sample in samples:
        info = json.loads(sample["json"])
        assert sample["__key__"] == info["key"] and info["key"] in ours
        assert {"frame000.png", "frame001.png", "roe000.src.png", "roe000.dst.png"} <= set(sample)
        assert info["turns"][0]["text"] == ours[info["key"]].texts[0]

"""`SessionDataset`: stream sessions from shards (local paths or fsspec URLs) for training.

Splitting: the shards of the split are ordered (and, with a shuffle buffer, reshuffled each epoch
with the seed), and every data consumer (rank x DataLoader worker) reads its own part:
  - "shards" mode (at least as many shards as consumers): consumer c reads shards c, c+T, c+2T, ...;
  - "samples" mode (fewer shards): every consumer reads all shards and keeps samples g with g % T == c.
Either way each session of an epoch goes to exactly one consumer. A shuffle buffer (per consumer,
seeded by seed, epoch and consumer) mixes samples across neighbouring shards.

Resuming: every yielded session carries `meta["position"]` = its consumer, epoch and index in that
consumer's stream. The dataset records the positions the training loop consumed (automatically when
iterated in-process, through `SessionDataset.loader()` with DataLoader workers, or by calling
`record()`), and `state_dict()` holds the next index per consumer plus which worker serves next.
After `load_state_dict()`, each consumer replays its epoch stream without decoding images up to its
saved index, and the worker order is rotated so the resumed sequence continues exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vincie_cli.sessions.session import Session, decode_session
from vincie_cli.sessions.shards import read_shard
from vincie_cli.utils.io import BadInputError, UsageError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

STATE_FORMAT = "vincie-session-dataset/1"


@dataclass
class ShardRef:
    url: str
    split: str | None  # None = unknown (no index): filtered per sample
    sessions: int | None  # from index.json, when known
    root: str  # the folder holding the shard (and index.json / cache/)


def _split_from_name(name: str) -> str | None:
    from vincie_cli.sessions.build import SHARD_RE

    m = SHARD_RE.match(name)
    return m["split"] if m else None


def resolve_shards(sources: list[str] | str, split: str | None) -> list[ShardRef]:
    """Shard list from paths, globs, brace patterns, directories (with index.json) or fsspec URLs."""
    import fsspec
    from braceexpand import braceexpand

    if isinstance(sources, str):
        sources = [sources]
    out: list[ShardRef] = []
    for source in sources:
        for item in braceexpand(str(source)):
            fs, path = fsspec.core.url_to_fs(item)
            if fs.isdir(path):
                root = path.rstrip("/")
                index_path = f"{root}/index.json"
                if fs.exists(index_path):
                    with fs.open(index_path, "rb") as f:
                        index = json.loads(f.read())
                    for row in index.get("shards", []):
                        url = fs.unstrip_protocol(f"{root}/{row['name']}")
                        out.append(ShardRef(url, row.get("split"), row.get("sessions"), fs.unstrip_protocol(root)))
                else:
                    for p in sorted(fs.glob(f"{root}/*.tar")):
                        name = p.rsplit("/", 1)[-1]
                        out.append(
                            ShardRef(fs.unstrip_protocol(p), _split_from_name(name), None, fs.unstrip_protocol(root))
                        )
            elif any(ch in path for ch in "*?["):
                for p in sorted(fs.glob(path)):
                    if p.endswith(".tar"):
                        out.append(_single(fs, p))
            elif fs.isfile(path):
                out.append(_single(fs, path))
            else:
                raise BadInputError(f"{item}: no such shard, directory or pattern")
    seen: set[str] = set()
    shards = []
    for ref in out:
        if ref.url in seen:
            continue
        seen.add(ref.url)
        if split is not None and ref.split is not None and ref.split != split:
            continue
        shards.append(ref)
    if not shards:
        raise BadInputError(f"no shards of split {split!r} in {', '.join(map(str, sources))}")
    return shards


def _single(fs: Any, path: str) -> ShardRef:
    """A shard named directly: its split and size from the sibling index.json when there is one."""
    root, name = path.rsplit("/", 1) if "/" in path else (".", path)
    split, sessions = _split_from_name(name), None
    index_path = f"{root}/index.json"
    if fs.exists(index_path):
        with fs.open(index_path, "rb") as f:
            for row in json.loads(f.read()).get("shards", []):
                if row["name"] == name:
                    split, sessions = row.get("split"), row.get("sessions")
    return ShardRef(fs.unstrip_protocol(path), split, sessions, fs.unstrip_protocol(root))


class _Collate:
    """Collate wrapper that carries each batch's stream positions back to the main process."""

    def __init__(self, fn: Callable[[list[Session]], Any] | None) -> None:
        self.fn = fn

    def __call__(self, batch: list[Session]) -> tuple[list[dict[str, int]], Any]:
        positions = [s.meta["position"] for s in batch]
        return positions, (self.fn(batch) if self.fn is not None else batch)


class SessionLoader:
    """A DataLoader over a SessionDataset that records consumed positions, so `state_dict()` is exact."""

    def __init__(
        self,
        dataset: SessionDataset,
        batch_size: int = 1,
        num_workers: int = 0,
        collate_fn: Callable[[list[Session]], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self.dataset = dataset
        self.loader = DataLoader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_Collate(collate_fn), **kwargs
        )

    def __iter__(self) -> Iterator[Any]:
        for positions, batch in self.loader:
            for p in positions:
                self.dataset.record(p)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state)


class SessionDataset(IterableDataset):
    """Sessions from WebDataset shards written by `vincie build-sessions` (see the module docstring).

    Args:
        sources: shard paths, globs, brace patterns ("shard-{000..009}.tar"), directories with index.json,
            or fsspec URLs of any of these ("s3://bucket/sessions/", "memory://x/train-000000.tar").
        split: keep only this split ("train" / "val"); None keeps all.
        shuffle_buffer: samples held for shuffling per consumer (0 = stream order, no reshuffling).
        seed: seeds the shard order and the shuffle buffers (the same seed gives the same stream).
        rank, world_size: this process's place among distributed ranks.
        loop: restart with the next epoch (new shuffle) when the data runs out.
        max_resolution: shrink frames and masks so the longer side is at most this many pixels.
        cache_identity: load cached latents / text embeddings computed by this model identity (see
            sessions/cache.py) into `session.cache`; a cache made by another model is an error, never used.
        errors: "raise" (default) or "skip": log and skip corrupt shards and undecodable sessions.
        cache_resolution, cache_text: pick among several caches of the same model.
    """

    def __init__(
        self,
        sources: list[str] | str,
        split: str | None = "train",
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        loop: bool = False,
        max_resolution: int | None = None,
        cache_identity: Any = None,
        errors: str = "raise",
        cache_resolution: int | None = None,
        cache_text: str | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} is outside world size {world_size}")
        if errors not in ("raise", "skip"):
            raise UsageError(f"errors={errors!r}: expected 'raise' or 'skip'")
        self.sources = sources
        self.split = split
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.loop = bool(loop)
        self.max_resolution = max_resolution
        self.cache_identity = cache_identity
        self.errors = errors
        self.shards = resolve_shards(sources, split)
        self._cursors: dict[int, tuple[int, int]] = {}  # consumer -> (epoch, next index)
        self._rotation = 0  # logical worker served by DataLoader worker 0
        self._num_workers: int | None = None
        self._caches: dict[str, Any] = {}
        if cache_identity is not None:
            from vincie_cli.sessions.cache import find_cache

            for root in sorted({s.root for s in self.shards}):
                self._caches[root] = find_cache(root, cache_identity, cache_resolution, cache_text)

    # -- bookkeeping ---------------------------------------------------------------------------

    @property
    def shard_fingerprint(self) -> str:
        return hashlib.sha256("\n".join(s.url.rsplit("/", 1)[-1] for s in self.shards).encode()).hexdigest()[:16]

    def num_sessions(self) -> int | None:
        """Sessions of the split when every shard's count is known from index.json, else None."""
        counts = [s.sessions for s in self.shards]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    def loader(
        self, batch_size: int = 1, num_workers: int = 0, collate_fn: Callable | None = None, **kwargs: Any
    ) -> SessionLoader:
        """A DataLoader (list-of-Session batches unless `collate_fn`) that keeps `state_dict()` exact."""
        workers = max(1, num_workers)
        if self._cursors and self._num_workers is not None and self._num_workers != workers:
            raise UsageError(
                f"cannot resume: the state was saved with {self._num_workers} DataLoader workers per rank, "
                f"this loader has {workers}"
            )
        self._num_workers = workers
        return SessionLoader(self, batch_size, num_workers, collate_fn, **kwargs)

    def record(self, position: dict[str, int]) -> None:
        """Mark a session (its meta["position"]) as consumed by the training loop."""
        c = position["consumer"]
        prev = self._cursors.get(c)
        nxt = (position["epoch"], position["index"] + 1)
        if prev is None or nxt > prev:
            self._cursors[c] = nxt
        self._num_workers = position["workers"]
        self._rotation = (position["worker"] + 1) % position["workers"]

    def state_dict(self) -> dict[str, Any]:
        """The position to resume from: next index per consumer and the next worker to serve."""
        return {
            "format": STATE_FORMAT,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_workers": self._num_workers or 1,
            "seed": self.seed,
            "shuffle_buffer": self.shuffle_buffer,
            "shards": self.shard_fingerprint,
            "cursors": {str(c): list(v) for c, v in sorted(self._cursors.items())},
            "next_worker": self._rotation,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` output. The same shards, seed, shuffle buffer, world size and number
        of DataLoader workers are required (a different setup cannot continue the same sequence)."""
        if state.get("format") != STATE_FORMAT:
            raise UsageError(f"not a SessionDataset state (format {state.get('format')!r})")
        for key, have in (
            ("world_size", self.world_size),
            ("rank", self.rank),
            ("seed", self.seed),
            ("shuffle_buffer", self.shuffle_buffer),
            ("shards", self.shard_fingerprint),
        ):
            if state[key] != have:
                raise UsageError(f"cannot resume: the saved state has {key}={state[key]!r}, this dataset {have!r}")
        self._cursors = {int(c): (int(v[0]), int(v[1])) for c, v in state["cursors"].items()}
        self._rotation = int(state["next_worker"])
        self._num_workers = int(state["num_workers"])

    # -- iteration -----------------------------------------------------------------------------

    def _consumer(self) -> tuple[int, int, int, int]:
        """(consumer id, consumers in total, logical worker, workers per rank) of the calling process."""
        info = get_worker_info()
        workers = info.num_workers if info is not None else 1
        if self._num_workers is not None and self._num_workers != workers and self._cursors:
            raise UsageError(
                f"cannot resume: the state was saved with {self._num_workers} DataLoader workers per rank, "
                f"this loader has {workers}"
            )
        worker = ((info.id if info is not None else 0) + self._rotation) % workers
        return self.rank * workers + worker, self.world_size * workers, worker, workers

    def _epoch_shards(self, epoch: int) -> list[ShardRef]:
        shards = list(self.shards)
        if self.shuffle_buffer > 0:
            random.Random(f"shards/{self.seed}/{epoch}").shuffle(shards)
        return shards

    def _raw(self, consumer: int, total: int, epoch: int, skip: int) -> Iterator[tuple[ShardRef, str, dict]]:
        """This consumer's samples of one epoch, still encoded. `skip` whole-shard skipping is used only
        when it cannot change the order (no shuffle buffer, counts known)."""
        shards = self._epoch_shards(epoch)
        by_shards = len(shards) >= total
        mine = shards[consumer::total] if by_shards else shards
        g = 0
        for ref in mine:
            if by_shards and self.shuffle_buffer == 0 and ref.sessions is not None and ref.split is not None:
                if skip >= ref.sessions:
                    skip -= ref.sessions
                    yield from ((ref, "", {}) for _ in range(ref.sessions))  # placeholders, dropped by the caller
                    continue
            try:
                cache = (
                    self._caches[ref.root].load_shard(ref.url.rsplit("/", 1)[-1]) if ref.root in self._caches else None
                )
                for key, members in read_shard(ref.url):
                    if ref.split is None and self.split is not None and _sample_split(members) != self.split:
                        continue
                    if cache is not None:
                        members["__cache__"] = cache.get(key)  # type: ignore[assignment]
                    if not by_shards:
                        g += 1
                        if (g - 1) % total != consumer:
                            continue
                    yield ref, key, members
            except BadInputError as e:
                if self.errors == "raise":
                    raise
                log.warning("skipping the rest of a shard: %s", e)

    def _stream(self, consumer: int, total: int, epoch: int, skip: int) -> Iterator[tuple[ShardRef, str, dict]]:
        raw = self._raw(consumer, total, epoch, skip if self.shuffle_buffer == 0 else 0)
        if self.shuffle_buffer <= 0:
            yield from raw
            return
        rng = random.Random(f"buffer/{self.seed}/{epoch}/{consumer}")
        buf: list[tuple[ShardRef, str, dict]] = []
        for item in raw:
            buf.append(item)
            if len(buf) >= self.shuffle_buffer:
                j = rng.randrange(len(buf))
                buf[j], buf[-1] = buf[-1], buf[j]
                yield buf.pop()
        rng.shuffle(buf)
        yield from buf

    def __iter__(self) -> Iterator[Session]:
        consumer, total, worker, workers = self._consumer()
        in_process = get_worker_info() is None
        epoch, start = self._cursors.get(consumer, (0, 0))
        while True:
            produced = 0
            for index, (ref, key, members) in enumerate(self._stream(consumer, total, epoch, start)):
                produced += 1
                if index < start:
                    continue
                position = {
                    "consumer": consumer,
                    "consumers": total,
                    "worker": worker,
                    "workers": workers,
                    "epoch": epoch,
                    "index": index,
                }
                session = self._decode(ref, key, members)
                if session is None:
                    continue
                session.meta["position"] = position
                if in_process:
                    self.record(position)
                yield session
            if not self.loop:
                return
            if produced == 0:
                log.warning("consumer %d of %d has no sessions; stopping instead of looping forever", consumer, total)
                return
            epoch, start = epoch + 1, 0

    def _decode(self, ref: ShardRef, key: str, members: dict[str, bytes]) -> Session | None:
        try:
            session, _ = decode_session(key, members, ref.url, self.max_resolution)
        except BadInputError as e:
            if self.errors == "raise":
                raise
            log.warning("skipping a session: %s", e)
            return None
        session.meta["shard"] = ref.url
        session.cache = members.get("__cache__")  # type: ignore[assignment]
        return session


def _sample_split(members: dict[str, bytes]) -> str | None:
    try:
        return json.loads(members["json"]).get("split")
    except (KeyError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def collate_sessions(batch: list[Session]) -> list[Session]:
    """The identity collate: a batch is a list of sessions (they differ in frames, turns and sizes)."""
    return batch

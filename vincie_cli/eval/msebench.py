"""MSE-Bench: 100 five-turn editing sessions judged by a vision-language model, with the paper's scoring rules.

Protocol (the official scorer's, see docs/eval.md):
- for turn k the judge sees prompts 1..k (as the Python repr of {'turn1': ..., 'turnk': ...}) and
  images [source, out_1, ..., out_k]; the source is resized to the turn-1 output size; it answers,
  for the LAST turn only, a reason and two integer scores 0..10 (prompt_following, consistency);
- a turn passes when both scores are strictly above the threshold (default 6: 6 fails, 7 passes);
- a session stops at its first failed turn; later turns are never judged;
- success rate at turn k = fraction of ALL sessions whose turns 1..k all passed (cumulative);
- prompt_following / consistency / overall (= sqrt(pf * c)) at turn k are sums over the sessions
  judged at turn k divided by the number of ALL sessions (unjudged turns count as 0).

Differences from the official scorer, all deliberate: any OpenAI-compatible chat endpoint instead of
one hosted Responses API; images labelled with their real MIME type; a judgement that still fails
after its retries is recorded as failed (not passed, listed in the report) instead of crashing the
run; judgements are cached per session and turn, so a resumed run asks only what is missing.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from vincie_cli.eval.common import (
    describe_missing,
    image_cell_bytes,
    image_ext,
    open_rgb,
    parquet_columns,
    parquet_files,
    read_parquet,
    turn_image,
)
from vincie_cli.eval.judge import ChatClient, JudgeConfig, JudgeError, ReplyError, parse_judgement, user_content
from vincie_cli.utils.io import BadInputError, UsageError, atomic_write_bytes, atomic_write_json
from vincie_cli.utils.log import get_logger, progress

log = get_logger(__name__)

HUB_ID = "leigangqu/MSE-Bench"
DEFAULT_THRESHOLD = 6
# SHA-256 of the official judge instruction (placeholders included); a user-supplied copy is
# recognised by it and reported as "official". The text itself is not part of this project.
OFFICIAL_JUDGE_PROMPT_SHA256 = "4196c19f844f53e2c7f4a3a01150864c1822203f42f30dccda76d08b44f3b949"
PROMPT_FIELDS = ("num_prompts", "num_images", "editing_prompt")
FATAL_STATUS = (401, 403, 404)  # a wrong key, model or URL: every judgement would fail the same way

# Our own instruction. Placeholders: {num_prompts}, {num_images}, {editing_prompt}; literal braces doubled.
DEFAULT_JUDGE_PROMPT = """\
You are grading one step of a multi-turn image editing session. A user started from a source image and \
gave one editing instruction per turn; after each turn the editing system returned a new image, which was \
the starting point of the next turn.

You get {num_prompts} instruction(s) and {num_images} images, in order: the source image first, then the \
result of turn 1, turn 2, and so on. Grade ONLY the final turn, turn {num_prompts}: compare the last image \
with the image just before it. Earlier turns are context.

The instructions, keyed by turn: {editing_prompt}

Give two whole-number scores from 0 to 10:
- "prompt_following": how fully the last image carries out the last instruction. 0 means the requested \
change is absent or wrong; 10 means it is carried out exactly as asked.
- "consistency": how well the last image keeps everything the last instruction did not ask to change, \
compared with the image before it (the source image for turn 1). 0 means the picture is unrelated or \
redrawn; 10 means nothing but the requested change is visible.

Think about both before scoring and state your grounds in one or two sentences. Answer with a single JSON \
object and nothing else:
{{"reason": "<your grounds>", "prompt_following": <0-10>, "consistency": <0-10>}}
"""


# --------------------------------------------------------------------------------------------
# judge instruction


@dataclass(frozen=True)
class JudgePrompt:
    template: str
    source: str  # "builtin" or the file path
    sha256: str

    @property
    def official(self) -> bool:
        return self.sha256 == OFFICIAL_JUDGE_PROMPT_SHA256

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "sha256": self.sha256, "official": self.official}

    def render(self, prompts: list[str]) -> str:
        return render_prompt(self.template, prompts)


def render_prompt(template: str, prompts: list[str]) -> str:
    """The instruction for judging the last of `prompts` (images = source + one per prompt)."""
    editing = {f"turn{i + 1}": p for i, p in enumerate(prompts)}
    return template.format(num_prompts=len(prompts), num_images=len(prompts) + 1, editing_prompt=str(editing))


def load_judge_prompt(path: str | Path | None) -> JudgePrompt:
    """The built-in instruction, or a user file checked for usable placeholders."""
    if path is None:
        text, source = DEFAULT_JUDGE_PROMPT, "builtin"
    else:
        p = Path(path)
        if not p.is_file():
            raise BadInputError(f"{p}: judge prompt file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise BadInputError(f"{p}: judge prompt file is not UTF-8 text") from None
        source = str(p)
    sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if sha != OFFICIAL_JUDGE_PROMPT_SHA256 and text.endswith("\n"):
        # an editor's trailing newline should not hide an official copy
        alt = hashlib.sha256(text[:-1].encode("utf-8")).hexdigest()
        if alt == OFFICIAL_JUDGE_PROMPT_SHA256:
            text, sha = text[:-1], alt
    try:
        render_prompt(text, ["a", "b"])
    except (KeyError, IndexError, ValueError) as e:
        raise BadInputError(
            f"{source}: judge prompt template does not format ({type(e).__name__}: {e}); placeholders are "
            f"{{num_prompts}}, {{num_images}}, {{editing_prompt}}; write literal braces as {{{{ and }}}}"
        ) from None
    if "{editing_prompt}" not in text:
        log.warning(
            "%s: the judge prompt has no {editing_prompt} placeholder; the judge will not see the prompts", source
        )
    return JudgePrompt(text, source, sha)


# --------------------------------------------------------------------------------------------
# benchmark


@dataclass
class BenchSession:
    id: str  # str(index)
    index: int
    row: int  # position in the benchmark (the official results are matched by it)
    image: bytes  # encoded source image
    prompts: list[str]
    operations: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)


REQUIRED_COLUMNS = ("image", "context")


def load_benchmark(source: str, limit: int | None = None) -> list[BenchSession]:
    """MSE-Bench sessions from a local parquet file/folder or the hub id (e.g. leigangqu/MSE-Bench)."""
    files = parquet_files(source, "MSE-Bench", allow_patterns=["*.parquet"])
    sessions: list[BenchSession] = []
    for f in files:
        cols = parquet_columns(f)
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        if missing:
            raise BadInputError(
                f"{f}: not an MSE-Bench parquet: missing column(s) {', '.join(missing)} "
                f"(found: {', '.join(cols[:12]) or 'none'}); expected image, index, context, ..."
            )
        table = read_parquet(
            f, [c for c in ("image", "index", "context", "operation", "description_target") if c in cols]
        )
        rows = table.to_pylist()
        for r in rows:
            row = len(sessions)
            where = f"{f}: row {row}"
            prompts = r.get("context")
            if (
                not isinstance(prompts, list)
                or not prompts
                or not all(isinstance(p, str) and p.strip() for p in prompts)
            ):
                raise BadInputError(f"{where}: 'context' must be a non-empty list of prompts")
            index = r.get("index")
            index = row if index is None else int(index)
            sessions.append(
                BenchSession(
                    id=str(index),
                    index=index,
                    row=row,
                    image=image_cell_bytes(r.get("image"), f"{where} column 'image'"),
                    prompts=list(prompts),
                    operations=list(r.get("operation") or []),
                    targets=list(r.get("description_target") or []),
                )
            )
    if not sessions:
        raise BadInputError(f"{source}: the benchmark has no sessions")
    n = {len(s.prompts) for s in sessions}
    if len(n) != 1:
        raise BadInputError(f"{source}: sessions have different turn counts ({sorted(n)}); MSE-Bench has one count")
    ids = [s.id for s in sessions]
    if len(set(ids)) != len(ids):
        raise BadInputError(f"{source}: duplicate 'index' values; each session needs its own")
    return sessions[:limit] if limit else sessions


def write_sources(sessions: list[BenchSession], folder: Path) -> dict[str, Path]:
    """Save each source image's original bytes as `<folder>/<id>.<ext>` (input for generation)."""
    paths = {}
    for s in sessions:
        p = folder / f"{s.id}{image_ext(s.image)}"
        if not p.is_file() or p.read_bytes() != s.image:
            atomic_write_bytes(p, s.image)
        paths[s.id] = p
    return paths


def generation_sessions(sessions: list[BenchSession], sources: dict[str, Path]) -> list[dict[str, Any]]:
    return [{"id": s.id, "images": [str(sources[s.id])], "prompts": list(s.prompts)} for s in sessions]


# --------------------------------------------------------------------------------------------
# results


def extract_results_parquet(path: Path, sessions: list[BenchSession], folder: Path) -> Path:
    """A split of MSE-Bench-results (columns turn_0_image..turn_{K-1}_image, rows in benchmark order)
    written out as `<folder>/<id>/turn{k}.png`."""
    cols = parquet_columns(path)
    turn_cols = sorted(
        (c for c in cols if c.startswith("turn_") and c.endswith("_image")), key=lambda c: c.split("_")[1]
    )
    if not turn_cols:
        raise BadInputError(
            f"{path}: not an MSE-Bench results parquet: no turn_<k>_image columns (found: {', '.join(cols[:12])})"
        )
    rows = read_parquet(path, turn_cols).to_pylist()
    if len(rows) < len(sessions):
        raise BadInputError(
            f"{path}: {len(rows)} rows, the benchmark has {len(sessions)} sessions (rows match by order)"
        )
    for s in sessions:
        for c in turn_cols:
            k = int(c.split("_")[1]) + 1
            value = rows[s.row].get(c)
            if value is None:
                continue
            data = image_cell_bytes(value, f"{path}: row {s.row} column {c}")
            p = folder / s.id / f"turn{k}{image_ext(data)}"
            if not p.is_file():
                atomic_write_bytes(p, data)
    return folder


def official_image(results: Path, session: BenchSession, turn: int) -> Path | None:
    """The official scorer's image cache naming: `{row}_turn{k-1}_rep0_seed{row}.png` (or without rep0_)."""
    for name in (
        f"{session.row}_turn{turn - 1}_rep0_seed{session.row}.png",
        f"{session.row}_turn{turn - 1}_seed{session.row}.png",
    ):
        if (results / name).is_file():
            return results / name
    return None


@dataclass
class ResultsCheck:
    paths: dict[str, list[Path | None]]  # session id -> image per turn (None when missing)
    incomplete: dict[str, list[int]]
    warnings: list[str]


def collect_results(results: Path, sessions: list[BenchSession]) -> ResultsCheck:
    """Find every session's turn images and check that they decode; sizes that change are warned about."""
    if not results.is_dir():
        raise BadInputError(f"{results}: results folder not found")
    paths: dict[str, list[Path | None]] = {}
    incomplete: dict[str, list[int]] = {}
    warnings: list[str] = []
    unreadable: list[str] = []
    for s in sessions:
        turns = [turn_image(results, s.id, k) or official_image(results, s, k) for k in range(1, len(s.prompts) + 1)]
        paths[s.id] = turns
        missing = [k for k, p in enumerate(turns, 1) if p is None]
        if missing:
            incomplete[s.id] = missing
        sizes = {}
        for k, p in enumerate(turns, 1):
            if p is None:
                continue
            try:
                sizes[k] = open_rgb(p).size
            except BadInputError as e:
                unreadable.append(str(e))
        first = sizes.get(1)
        odd = [f"turn {k} is {w}x{h}" for k, (w, h) in sizes.items() if first and (w, h) != first]
        if odd:
            warnings.append(f"session {s.id}: {', '.join(odd)}, turn 1 is {first[0]}x{first[1]}")
    if unreadable:
        more = f" (and {len(unreadable) - 3} more)" if len(unreadable) > 3 else ""
        raise BadInputError(f"{results}: unreadable result images: {'; '.join(unreadable[:3])}{more}")
    if len(incomplete) == len(sessions):
        raise BadInputError(
            f"{results}: no result images for any session "
            f"(expected <id>/turn1.png .. turn{len(sessions[0].prompts)}.png, "
            f"e.g. {results / sessions[0].id / 'turn1.png'})"
        )
    return ResultsCheck(paths, incomplete, warnings)


# --------------------------------------------------------------------------------------------
# judging


Status = Literal["ok", "error", "missing"]


@dataclass
class TurnJudgement:
    session: str
    turn: int
    status: Status
    prompt_following: int | None = None
    consistency: int | None = None
    reason: str = ""
    error: str = ""
    raw: str = ""
    cached: bool = False

    def passed(self, threshold: int) -> bool:
        return (
            self.status == "ok"
            and self.prompt_following is not None
            and self.consistency is not None
            and self.prompt_following > threshold
            and self.consistency > threshold
        )


def judge_images(source: bytes, outputs: list[Path]) -> list[bytes]:
    """The images the judge sees: the source (JPEG round trip at PIL defaults, as the official scorer
    stores it, then resized to the turn-1 output size with PIL's default filter, as PNG) and the raw
    bytes of each output file."""
    from PIL import Image

    img = open_rgb(source, "benchmark source image")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    img = Image.open(io.BytesIO(buf.getvalue()))
    size = open_rgb(outputs[0]).size
    img = img.resize(size, Image.Resampling.BICUBIC)
    png = io.BytesIO()
    img.save(png, format="PNG")
    return [png.getvalue()] + [p.read_bytes() for p in outputs]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class JudgementCache:
    """One JSON file per session and turn: `<dir>/<session>/turn{k}.json`, valid only for the same key
    (judge model, instruction, prompts and image bytes). Only usable judgements are cached; failures
    are asked again on the next run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, session: str, turn: int) -> Path:
        return self.folder / session / f"turn{turn}.json"

    def get(self, session: str, turn: int, key: str) -> TurnJudgement | None:
        p = self.path(session, turn)
        if not p.is_file():
            return None
        try:
            obj = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: unreadable cached judgement, asking again", p)
            return None
        if obj.get("key") != key:
            return None
        return TurnJudgement(
            session=session,
            turn=turn,
            status="ok",
            prompt_following=obj["prompt_following"],
            consistency=obj["consistency"],
            reason=obj.get("reason", ""),
            raw=obj.get("raw", ""),
            cached=True,
        )

    def put(self, j: TurnJudgement, key: str, extra: dict[str, Any]) -> None:
        obj = {
            "session": j.session,
            "turn": j.turn,
            "prompt_following": j.prompt_following,
            "consistency": j.consistency,
            "reason": j.reason,
            "raw": j.raw,
            "key": key,
            **extra,
        }
        atomic_write_json(self.path(j.session, j.turn), obj)


def ask_judge(client: ChatClient, prompt: JudgePrompt, prompts: list[str], images: list[bytes]) -> tuple[dict, str]:
    """One judgement: re-ask when the reply is unusable. Returns (parsed, raw reply); raises
    ReplyError (last problem) or JudgeError."""
    text = prompt.render(prompts)
    content = user_content(text, images)
    problem = ""
    for _ in range(max(1, client.config.reply_attempts)):
        raw = client.complete(content)
        try:
            return parse_judgement(raw), raw
        except ReplyError as e:
            problem = str(e)
            log.debug("unusable judge reply (%s), asking again", problem)
    raise ReplyError(f"{problem} (after {client.config.reply_attempts} replies)")


def judge_session(
    client: ChatClient,
    prompt: JudgePrompt,
    cache: JudgementCache,
    session: BenchSession,
    outputs: list[Path | None],
    threshold: int,
) -> list[TurnJudgement]:
    """Judge turns 1.. in order, stopping after the first turn that does not pass."""
    out: list[TurnJudgement] = []
    src_sha = _sha(session.image)
    images: list[bytes] | None = None
    for k in range(1, len(session.prompts) + 1):
        if outputs[k - 1] is None:
            out.append(TurnJudgement(session.id, k, "missing", error=f"turn{k} image missing"))
            break
        shas = [src_sha] + [_sha(p.read_bytes()) for p in outputs[:k]]  # type: ignore[union-attr]
        key = _sha(
            json.dumps(
                {"judge": client.config.model, "prompt": prompt.sha256, "prompts": session.prompts[:k], "images": shas},
                sort_keys=True,
            ).encode()
        )
        j = cache.get(session.id, k, key)
        if j is None:
            try:
                if images is None:
                    avail = outputs[: outputs.index(None)] if None in outputs else outputs
                    images = judge_images(session.image, avail)  # type: ignore[arg-type]
                parsed, raw = ask_judge(client, prompt, session.prompts[:k], images[: k + 1])
                j = TurnJudgement(
                    session.id, k, "ok", parsed["prompt_following"], parsed["consistency"], parsed["reason"], raw=raw
                )
                cache.put(
                    j, key, {"judge_model": client.config.model, "prompt_sha256": prompt.sha256, "time": time.time()}
                )
            except JudgeError as e:
                if e.status in FATAL_STATUS:
                    raise
                j = TurnJudgement(session.id, k, "error", error=str(e))
            except ReplyError as e:
                j = TurnJudgement(session.id, k, "error", error=f"unusable judge reply: {e}")
            except BadInputError as e:
                j = TurnJudgement(session.id, k, "error", error=str(e))
        out.append(j)
        if not j.passed(threshold):
            break
    return out


# --------------------------------------------------------------------------------------------
# scoring


def aggregate(
    judgements: dict[str, list[TurnJudgement]], n_sessions: int, n_turns: int, threshold: int
) -> dict[str, Any]:
    """The paper's per-turn numbers; every average divides by `n_sessions`.

    `judgements[session]` lists that session's judged turns in order; anything after its first
    failed turn is ignored (early stop), so cached judgements made with a lower threshold are safe.
    """
    if n_sessions <= 0:
        raise ValueError("n_sessions must be positive")
    success = [0] * n_turns
    pf = [0.0] * n_turns
    cons = [0.0] * n_turns
    overall = [0.0] * n_turns
    judged = [0] * n_turns
    errors = [0] * n_turns
    missing = [0] * n_turns
    for turns in judgements.values():
        by_turn = {j.turn: j for j in turns}
        for k in range(1, n_turns + 1):
            j = by_turn.get(k)
            if j is None:
                break
            if j.status == "error":
                errors[k - 1] += 1
                break
            if j.status == "missing":
                missing[k - 1] += 1
                break
            judged[k - 1] += 1
            pf[k - 1] += j.prompt_following
            cons[k - 1] += j.consistency
            overall[k - 1] += math.sqrt(j.prompt_following * j.consistency)
            if not j.passed(threshold):
                break
            success[k - 1] += 1
    n = float(n_sessions)
    return {
        "success_rate": [s / n for s in success],
        "prompt_following": [x / n for x in pf],
        "consistency": [x / n for x in cons],
        "overall": [x / n for x in overall],
        "judged": judged,
        "errors": errors,
        "missing": missing,
    }


# --------------------------------------------------------------------------------------------
# the whole run


def _public(j: TurnJudgement) -> dict[str, Any]:
    d = asdict(j)
    d.pop("raw")  # the full replies stay in the judgement cache
    return d


def run_msebench(
    sessions: list[BenchSession],
    results: Path,
    out_dir: Path,
    judge: JudgeConfig,
    prompt: JudgePrompt,
    threshold: int = DEFAULT_THRESHOLD,
    concurrency: int = 8,
    allow_missing: bool = False,
    on_judgement: Callable[[TurnJudgement], None] | None = None,
    client: ChatClient | None = None,
) -> dict[str, Any]:
    """Judge a results folder and return the report dict (metrics per turn, failures, warnings)."""
    if concurrency < 1:
        raise UsageError("--concurrency must be at least 1")
    check = collect_results(results, sessions)
    if check.incomplete and not allow_missing:
        raise BadInputError(
            f"{results}: {describe_missing(check.incomplete, len(sessions))}; generate them, or pass "
            f"--allow-missing to count missing turns as failed"
        )
    for w in check.warnings[:5]:
        log.warning("%s", w)
    if len(check.warnings) > 5:
        log.warning("... %d more sessions whose image size changes between turns", len(check.warnings) - 5)
    if prompt.official:
        log.info("judge prompt: the official MSE-Bench instruction (sha256 matches)")
    cache = JudgementCache(out_dir / "judgements")
    own_client = client is None
    client = client or ChatClient(judge)
    n_turns = len(sessions[0].prompts)
    judgements: dict[str, list[TurnJudgement]] = {}
    t0 = time.time()
    pool = ThreadPoolExecutor(max_workers=concurrency)
    finished = False
    try:
        futures = {
            pool.submit(judge_session, client, prompt, cache, s, check.paths[s.id], threshold): s.id for s in sessions
        }
        for fut in progress(as_completed(futures), total=len(futures), desc="judging"):
            sid = futures[fut]
            judgements[sid] = fut.result()
            if on_judgement:
                for j in judgements[sid]:
                    on_judgement(j)
        finished = True
    finally:
        # on an error or Ctrl-C, drop the queued sessions; cached judgements are kept for the next run
        pool.shutdown(wait=finished, cancel_futures=True)
        if own_client:
            client.close()
    ordered = {s.id: judgements[s.id] for s in sessions}
    metrics = aggregate(ordered, len(sessions), n_turns, threshold)
    failures = [
        {"session": j.session, "turn": j.turn, "status": j.status, "error": j.error}
        for turns in ordered.values()
        for j in turns
        if j.status != "ok"
    ]
    asked = sum(1 for turns in ordered.values() for j in turns if j.status == "ok" and not j.cached)
    cached = sum(1 for turns in ordered.values() for j in turns if j.cached)
    return {
        "benchmark": "mse-bench",
        "n_sessions": len(sessions),
        "turns": list(range(1, n_turns + 1)),
        "metrics": metrics,
        "plot_metrics": ["success_rate", "overall", "prompt_following", "consistency"],
        "higher_is_better": {"success_rate": True, "overall": True, "prompt_following": True, "consistency": True},
        "summary": {
            f"success_rate_turn{n_turns}": metrics["success_rate"][-1],
            "success_rate_turn1": metrics["success_rate"][0],
            "threshold": threshold,
            "judge_failures": sum(1 for f in failures if f["status"] == "error"),
            "missing_turns": sum(1 for f in failures if f["status"] == "missing"),
            "judgements_asked": asked,
            "judgements_cached": cached,
            "requests_sent": client.requests_sent,
            "seconds": round(time.time() - t0, 2),
        },
        "config": {
            "judge": judge.public(),
            "judge_prompt": prompt.info(),
            "threshold": threshold,
            "concurrency": concurrency,
            "results": str(results),
        },
        "sessions": {sid: [_public(j) for j in turns] for sid, turns in ordered.items()},
        "failures": failures,
        "warnings": check.warnings,
    }

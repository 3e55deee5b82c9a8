"""Text encoders with one interface: the released QWen-14B ("llm14b"), T5, and a vocabulary-free byte encoder.

Every encoder maps each prompt on its own to the hidden states of its valid tokens:
`encode(prompts: list[str]) -> list[Tensor (n_k, dim)]`, in prompt order, padding dropped. Also `dim`,
`max_length`, `device`, `dtype`, `save_pretrained(dir)` and `TextEncoder.from_pretrained(dir)`.

- `QwenTextEncoder`: the release's QWen v1 LLM run as transformers `Qwen2Model` after a key conversion
  (c_attn split into q/k/v, w2 -> gate, w1 -> up, c_proj -> down, ln_f -> norm; lm_head dropped), with the
  QWen v1 tokenizer rebuilt on `tiktoken` from the shipped `qwen.tiktoken` (no remote code). Per prompt: NFC,
  BPE, at most max_length - 1 tokens, then one `<|endoftext|>` (EOD) - or two with `eod_tokens=2`, the
  reading of the release in which its tokenizer also appends one (spec §7.2 / §13). Last hidden state after
  the final norm, bf16 by default.
- `T5TextEncoder`: transformers `T5EncoderModel` + its tokenizer (which appends `</s>`).
- `ByteTextEncoder`: UTF-8 bytes + EOD -> embedding (+ learned positions) -> 0 or more pre-norm transformer
  layers -> LayerNorm. Seeded init; its weights are saved with the model. For tests and small models.

Folder layout written by `save_pretrained`: `text_encoder.json` (a `TextEncoderConfig`), `config.json`
(the transformers config, qwen/t5), `model.safetensors` (or shards + `model.safetensors.index.json`), and
the tokenizer files (`qwen.tiktoken`; T5's own files; none for bytes).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vincie_cli.model.weights import (
    FilePages,
    SafetensorsReader,
    TensorSpec,
    dtype_from_name,
    load_torch_state_dict,
    write_safetensors,
)
from vincie_cli.utils.io import BadInputError, atomic_write_json
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

TEXT_CONFIG_FILE = "text_encoder.json"
QWEN_TIKTOKEN_FILE = "qwen.tiktoken"
MAX_SHARD_BYTES = 5 * 1024**3

# QWen v1 pre-tokenisation, written from its documented behaviour: cl100k-style splitting, except that
# numbers are split into single digits. Alternatives are tried left to right at each position.
QWEN_PRETOKENIZE_PATTERN = "|".join(
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",  # English contractions, any case
        r"[^\r\n\p{L}\p{N}]?\p{L}+",  # a word, optionally led by one non-letter, non-digit character (e.g. a space)
        r"\p{N}",  # every digit on its own
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",  # a run of symbols/punctuation, optional leading space, trailing newlines
        r"\s*[\r\n]+",  # line breaks with the whitespace in front of them
        r"\s+(?!\S)",  # whitespace that is not followed by a word (the last space goes with the next word)
        r"\s+",  # remaining whitespace
    ]
)
QWEN_ENDOFTEXT = "<|endoftext|>"
QWEN_SPECIAL_TOKENS = (QWEN_ENDOFTEXT, "<|im_start|>", "<|im_end|>") + tuple(f"<|extra_{i}|>" for i in range(205))

# QWen v1 -> Qwen2Model key names (the c_attn split is handled separately)
_QWEN_RENAMES = {
    "ln_1.weight": "input_layernorm.weight",
    "ln_2.weight": "post_attention_layernorm.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.w2.weight": "mlp.gate_proj.weight",  # w2 is the SiLU-gated branch in QWen v1
    "mlp.w1.weight": "mlp.up_proj.weight",
    "mlp.c_proj.weight": "mlp.down_proj.weight",
}


@dataclass
class TextEncoderConfig:
    """Text encoder settings. `arch` holds the transformers config (Qwen2Config / T5Config fields) for qwen/t5."""

    kind: str = "byte"  # "qwen" | "t5" | "byte"
    dim: int = 64  # width of the returned states (the DiT's txt_in_dim)
    max_length: int = 150  # tokens per prompt, EOD included
    eod_tokens: int = 1  # qwen only: EODs after the prompt tokens (1, or 2 for the other reading of the release)
    dtype: str = "fp32"  # fp32 | bf16 | fp16
    batch_size: int = 16  # prompts per forward in `encode`
    # byte encoder
    layers: int = 0
    heads: int = 4
    mlp_ratio: float = 4.0
    seed: int = 0
    word_buckets: int = 0  # > 0: every byte of a word also gets the embedding of the word's hash bucket
    # qwen / t5
    arch: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in ("qwen", "t5", "byte"):
            problems.append(f"kind must be 'qwen', 't5' or 'byte', got {self.kind!r}")
        if self.dim < 1:
            problems.append(f"dim must be positive, got {self.dim}")
        if self.max_length < 3:
            problems.append(f"max_length must be >= 3, got {self.max_length}")
        if self.eod_tokens not in (1, 2):
            problems.append(f"eod_tokens must be 1 or 2, got {self.eod_tokens}")
        if self.dtype not in ("fp32", "bf16", "fp16"):
            problems.append(f"dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.word_buckets < 0 or (self.word_buckets and self.kind != "byte"):
            problems.append(f"word_buckets must be >= 0 and is for the byte encoder only, got {self.word_buckets}")
        if self.kind == "byte" and self.layers > 0 and self.dim % self.heads:
            problems.append(f"byte encoder: heads {self.heads} do not divide dim {self.dim}")
        if problems:
            raise BadInputError("invalid text encoder config: " + "; ".join(problems))

    @property
    def torch_dtype(self) -> torch.dtype:
        return dtype_from_name(self.dtype)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TextEncoderConfig:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise BadInputError(f"unknown text encoder config keys: {', '.join(unknown)}")
        return cls(**dict(d))


# --------------------------------------------------------------------------------------------
# the shared interface


class TextEncoder(nn.Module):
    """Base class: tokenisation per prompt, batched forward, valid rows per prompt."""

    config: TextEncoderConfig

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def max_length(self) -> int:
        return self.config.max_length

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def tokenize(self, prompt: str) -> list[int]:
        """Token ids of one prompt, at most max_length, end markers included."""
        raise NotImplementedError

    def pad_id(self) -> int:
        return 0

    def pad_to_max_length(self) -> bool:
        """Pad every batch to max_length (as the release does for QWen) rather than to the longest prompt."""
        return False

    def hidden_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        """(B, L) ids and bool mask -> (B, L, dim) states."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> list[Tensor]:
        """One (n_k, dim) tensor per prompt: the states of its valid tokens, in order (on self.device)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts")
        out: list[Tensor] = []
        for start in range(0, len(prompts), self.config.batch_size):
            chunk = prompts[start : start + self.config.batch_size]
            ids = [self.tokenize(p) for p in chunk]
            width = self.max_length if self.pad_to_max_length() else max(len(i) for i in ids)
            batch = torch.full((len(ids), width), self.pad_id(), dtype=torch.long)
            mask = torch.zeros((len(ids), width), dtype=torch.bool)
            for row, seq in enumerate(ids):
                batch[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = True
            states = self.hidden_states(batch.to(self.device), mask.to(self.device))
            out.extend(states[row, : len(seq)].clone() for row, seq in enumerate(ids))
        return out

    # saving / loading ------------------------------------------------------------------------

    def save_pretrained(self, directory: str | os.PathLike) -> dict[str, str]:
        """Write config, weights and tokenizer files into `directory`; returns {file: sha256} of the weights."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(directory / TEXT_CONFIG_FILE, self.config.to_dict())
        self._save_extra(directory)
        sd = self._state_dict_to_save()
        return save_sharded_safetensors(
            directory, [(k, tuple(v.shape), v.dtype) for k, v in sd.items()], sd.__getitem__
        )

    def _state_dict_to_save(self) -> dict[str, Tensor]:
        return dict(self.state_dict())

    def _save_extra(self, directory: Path) -> None:
        pass

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = None,
        **overrides: Any,
    ) -> TextEncoder:
        return load_text_encoder(directory, device=device, dtype=dtype, **overrides)


# --------------------------------------------------------------------------------------------
# QWen v1 tokenizer (tiktoken)


def read_tiktoken_ranks(path: str | os.PathLike) -> dict[bytes, int]:
    """Parse a `.tiktoken` file: one `base64(token) rank` per line."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"{path}: no such tokenizer file")
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except (ValueError, binascii.Error):
            raise BadInputError(f"{path}:{n}: expected 'base64-token rank'") from None
    if not ranks:
        raise BadInputError(f"{path}: empty tokenizer file")
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise BadInputError(f"{path}: ranks are not 0..{len(ranks) - 1} without gaps")
    missing = [b for b in range(256) if bytes([b]) not in ranks]
    if missing:
        raise BadInputError(
            f"{path}: {len(missing)} single bytes have no rank (e.g. {missing[0]}), cannot encode all text"
        )
    return ranks


class QwenTokenizer:
    """The QWen v1 tokenizer on tiktoken: NFC, the pre-tokenisation pattern above, BPE over `qwen.tiktoken`.

    Special tokens follow the ranks: `<|endoftext|>` = number of ranks (151643 for the real file), then
    `<|im_start|>`, `<|im_end|>`, `<|extra_0|>` .. `<|extra_204|>`. Their surface forms in text are encoded
    as the special tokens (as QWen v1 does by default). No BOS or EOS is added here.
    """

    def __init__(self, ranks_file: str | os.PathLike) -> None:
        import tiktoken

        self.ranks_file = Path(ranks_file)
        ranks = read_tiktoken_ranks(self.ranks_file)
        n = len(ranks)
        self.special_tokens = {tok: n + i for i, tok in enumerate(QWEN_SPECIAL_TOKENS)}
        self._enc = tiktoken.Encoding(
            name=f"qwen-v1-{n}",
            pat_str=QWEN_PRETOKENIZE_PATTERN,
            mergeable_ranks=ranks,
            special_tokens=self.special_tokens,
        )

    @property
    def eod_id(self) -> int:
        return self.special_tokens[QWEN_ENDOFTEXT]

    @property
    def vocab_size(self) -> int:
        return self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._enc.encode(unicodedata.normalize("NFC", text), allowed_special="all", disallowed_special=())

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode(ids)


# --------------------------------------------------------------------------------------------
# QWen v1 checkpoint -> Qwen2Model


def qwen2_arch_from_qwen_v1(cfg: Mapping[str, Any], source: str = "config.json") -> dict[str, Any]:
    """Map a QWen v1 (remote-code) config.json to Qwen2Config fields; refuses what Qwen2 cannot express."""
    need = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    missing = [k for k in need if k not in cfg]
    if missing:
        raise BadInputError(f"{source}: not a QWen v1 config (missing {', '.join(missing)})")
    if cfg.get("model_type", "qwen") != "qwen":
        raise BadInputError(f"{source}: model_type {cfg.get('model_type')!r}, expected 'qwen' (QWen v1)")
    hidden, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    if hidden % heads or int(cfg.get("kv_channels", hidden // heads)) * heads != hidden:
        raise BadInputError(f"{source}: kv_channels x heads must equal hidden_size")
    if float(cfg.get("rotary_pct", 1.0)) != 1.0:
        raise BadInputError(f"{source}: rotary_pct {cfg['rotary_pct']} is not supported (only 1.0)")
    if int(cfg["intermediate_size"]) % 2:
        raise BadInputError(f"{source}: intermediate_size must be even (two MLP branches of half the size)")
    return {
        "vocab_size": int(cfg["vocab_size"]),
        "hidden_size": hidden,
        "intermediate_size": int(cfg["intermediate_size"]) // 2,
        "num_hidden_layers": int(cfg["num_hidden_layers"]),
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "hidden_act": "silu",
        "max_position_embeddings": int(cfg.get("seq_length", cfg.get("max_position_embeddings", 8192))),
        "rms_norm_eps": float(cfg.get("layer_norm_epsilon", 1e-6)),
        "rope_theta": float(cfg.get("rotary_emb_base", 10000.0)),
        "tie_word_embeddings": False,
        "use_sliding_window": False,
    }


@dataclass
class _Source:
    file: Path
    key: str
    rows: tuple[int, int] | None = None  # slice of the source tensor's rows (c_attn split)


class QwenV1Checkpoint:
    """Lazy view of a released `llm14b/` folder as Qwen2Model tensors (one source tensor in memory at a time).

    Weights: `model.safetensors`, `model-*.safetensors`, `pytorch_model*.bin` (read with weights_only=True),
    following `*.index.json` when present. `specs()` lists the converted tensors from headers/shapes only;
    `get(name)` reads and converts one.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / "config.json"
        if not cfg_path.is_file():
            raise BadInputError(f"{self.folder}: no config.json (expected a QWen v1 'llm14b' folder)")
        try:
            self.raw_config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{cfg_path}: not valid JSON ({e.msg})") from None
        self.arch = qwen2_arch_from_qwen_v1(self.raw_config, str(cfg_path))
        self.files = _weight_files(self.folder)
        self._readers: dict[Path, Any] = {}
        self._pages: list[FilePages] = []
        self._cache: tuple[tuple[Path, str], Tensor] | None = None
        self._sources: dict[str, _Source] = {}
        self._shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
        self._index()

    def _open(self, file: Path) -> Any:
        if file not in self._readers:
            if file.suffix == ".safetensors":
                self._readers[file] = SafetensorsReader(file)
            else:
                self._readers[file] = load_torch_state_dict(file)  # mmap'd
                self._pages.append(FilePages(file))
        return self._readers[file]

    def release_pages(self, t: Tensor) -> None:
        """Give back the resident pages of a tensor mmap'd from a .bin shard (values are unaffected)."""
        for pages in self._pages:
            pages.release(t)

    def _source_items(self) -> Iterator[tuple[Path, str, tuple[int, ...], torch.dtype]]:
        for file in self.files:
            r = self._open(file)
            if isinstance(r, SafetensorsReader):
                for s in r.specs():
                    yield file, s.name, s.shape, s.dtype
            else:
                for k, v in r.items():
                    yield file, k, tuple(v.shape), v.dtype

    def _index(self) -> None:
        hidden = self.arch["hidden_size"]
        unexpected = []
        for file, key, shape, dtype in self._source_items():
            name = key.removeprefix("transformer.")
            if key == "lm_head.weight" or name.endswith("rotary_emb.inv_freq"):
                continue
            if name == "wte.weight":
                self._add("embed_tokens.weight", _Source(file, key), shape, dtype)
            elif name == "ln_f.weight":
                self._add("norm.weight", _Source(file, key), shape, dtype)
            elif name.startswith("h.") and name.count(".") >= 3:
                _, layer, rest = name.split(".", 2)
                prefix = f"layers.{layer}."
                if rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
                    kind = rest.rsplit(".", 1)[1]
                    if shape[0] != 3 * hidden:
                        raise BadInputError(
                            f"{file}: {key} has {shape[0]} rows, expected 3 x hidden_size = {3 * hidden}"
                        )
                    for i, proj in enumerate(("q_proj", "k_proj", "v_proj")):
                        rows = (i * hidden, (i + 1) * hidden)
                        self._add(
                            f"{prefix}self_attn.{proj}.{kind}", _Source(file, key, rows), (hidden, *shape[1:]), dtype
                        )
                elif rest in _QWEN_RENAMES:
                    self._add(prefix + _QWEN_RENAMES[rest], _Source(file, key), shape, dtype)
                else:
                    unexpected.append(key)
            else:
                unexpected.append(key)
        if unexpected:
            shown = ", ".join(unexpected[:10]) + (f" (and {len(unexpected) - 10} more)" if len(unexpected) > 10 else "")
            raise BadInputError(f"{self.folder}: not a QWen v1 checkpoint: unexpected keys {shown}")

    def _add(self, name: str, src: _Source, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        self._sources[name] = src
        self._shapes[name] = (tuple(shape), dtype)

    def specs(self, dtype: torch.dtype | None = None) -> list[TensorSpec]:
        return [TensorSpec(k, s, dtype or dt) for k, (s, dt) in self._shapes.items()]

    def get(self, name: str) -> Tensor:
        src = self._sources[name]
        cache_key = (src.file, src.key)
        if self._cache is not None and self._cache[0] == cache_key:
            t = self._cache[1]
        else:
            r = self._open(src.file)
            t = r.get(src.key) if isinstance(r, SafetensorsReader) else r[src.key]
            self._cache = (cache_key, t)
        if src.rows is not None:
            t = t[src.rows[0] : src.rows[1]]
        return t

    def tokenizer_file(self) -> Path:
        f = self.folder / QWEN_TIKTOKEN_FILE
        if not f.is_file():
            raise BadInputError(f"{self.folder}: no {QWEN_TIKTOKEN_FILE} (the QWen v1 tokenizer ranks)")
        return f

    def release(self) -> None:
        self._readers.clear()
        self._pages.clear()
        self._cache = None


def _weight_files(folder: Path) -> list[Path]:
    """Weight shards of a transformers-style folder: index json first, else safetensors, else .bin files."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise BadInputError(f"{index}: not a valid weight index (needs a 'weight_map')") from None
            files = sorted({folder / f for f in weight_map.values()})
            absent = [f.name for f in files if not f.is_file()]
            if absent:
                raise BadInputError(f"{index}: lists missing shard files {', '.join(absent[:5])}")
            return files
    for pattern in (
        "model.safetensors",
        "model-*.safetensors",
        "*.safetensors",
        "pytorch_model.bin",
        "pytorch_model-*.bin",
    ):
        files = sorted(folder.glob(pattern))
        if files:
            return files
    raise BadInputError(f"{folder}: no weight files (model*.safetensors or pytorch_model*.bin)")


def save_sharded_safetensors(
    directory: Path,
    entries: list[tuple[str, tuple[int, ...], torch.dtype]],
    get: Callable[[str], Tensor],
    max_shard_bytes: int = MAX_SHARD_BYTES,
    after_write: Callable[[Tensor], None] | None = None,
) -> dict[str, str]:
    """Write tensors as `model.safetensors`, or as `model-0000i-of-0000n.safetensors` + index when larger than
    `max_shard_bytes`. Returns {file name: sha256}."""
    specs = [TensorSpec(n, s, d) for n, s, d in entries]
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for s in specs:
        if shards[-1] and size + s.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(s)
        size += s.nbytes
    hashes = {}
    if len(shards) == 1:
        hashes["model.safetensors"] = write_safetensors(
            directory / "model.safetensors", specs, get, {"format": "pt"}, after_write
        )
        return hashes
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        hashes[name] = write_safetensors(directory / name, shard, get, {"format": "pt"}, after_write)
        weight_map.update({s.name: name for s in shard})
    total = sum(s.nbytes for s in specs)
    atomic_write_json(
        directory / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map}
    )
    return hashes


def _iter_dir_tensors(directory: Path, device: str | torch.device) -> Iterator[tuple[str, Tensor]]:
    for file in _weight_files(directory):
        if file.suffix == ".safetensors":
            yield from SafetensorsReader(file, device).items()
        else:
            yield from load_torch_state_dict(file).items()


def _assign_strict(model: nn.Module, sd: dict[str, Tensor], source: str, device, dtype: torch.dtype) -> None:
    """Strict name/shape check, then load with assign=True (model built with meta parameters)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    misshaped = [
        f"{k} {list(sd[k].shape)} (model {list(expected[k].shape)})"
        for k in sd
        if k in expected and sd[k].shape != expected[k].shape
    ]

    def names(xs: list[str]) -> str:
        return ", ".join(xs[:10]) + (f" (and {len(xs) - 10} more)" if len(xs) > 10 else "")

    problems = []
    if missing:
        problems.append("missing keys: " + names(missing))
    if unexpected:
        problems.append("unexpected keys: " + names(unexpected))
    if misshaped:
        problems.append("mis-shaped keys: " + names(misshaped))
    if problems:
        raise BadInputError(f"{source}: weights do not fit the text encoder: " + "; ".join(problems))
    sd = {k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.to(device)  # non-persistent buffers (rotary frequencies) built on CPU


def _build_empty(factory: Callable[[], nn.Module]) -> nn.Module:
    """Build with parameters on the meta device and buffers on CPU (nothing allocated for weights)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        return factory()


class QwenTextEncoder(TextEncoder):
    """QWen v1 as transformers `Qwen2Model`; see the module docstring."""

    def __init__(
        self, config: TextEncoderConfig, tokenizer: QwenTokenizer | None = None, model: nn.Module | None = None
    ):
        super().__init__()
        from transformers import Qwen2Config, Qwen2Model

        if config.kind != "qwen":
            raise BadInputError(f"QwenTextEncoder needs kind 'qwen', got {config.kind!r}")
        self.config = config
        self.tokenizer = tokenizer
        arch = Qwen2Config(**config.arch)
        if arch.hidden_size != config.dim:
            raise BadInputError(f"text encoder dim {config.dim} != Qwen hidden_size {arch.hidden_size}")
        self.model = model if model is not None else Qwen2Model(arch)
        if tokenizer is not None and tokenizer.vocab_size > arch.vocab_size:
            raise BadInputError(
                f"{tokenizer.ranks_file}: tokenizer has {tokenizer.vocab_size} tokens, more than the model's "
                f"vocab_size {arch.vocab_size}"
            )

    def pad_id(self) -> int:
        return self._tok().eod_id

    def pad_to_max_length(self) -> bool:
        return True

    def _tok(self) -> QwenTokenizer:
        if self.tokenizer is None:
            raise BadInputError("this QWen text encoder has no tokenizer (qwen.tiktoken) loaded")
        return self.tokenizer

    def tokenize(self, prompt: str) -> list[int]:
        tok = self._tok()
        ids = tok.encode(prompt)[: self.max_length - 1] + [tok.eod_id]
        if self.config.eod_tokens == 2 and len(ids) < self.max_length:
            ids.append(tok.eod_id)
        return ids

    def hidden_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=mask.long(), use_cache=False)
        return out.last_hidden_state

    def _state_dict_to_save(self) -> dict[str, Tensor]:
        return dict(self.model.state_dict())

    def _save_extra(self, directory: Path) -> None:
        import shutil

        atomic_write_json(directory / "config.json", self.model.config.to_dict())
        if self.tokenizer is not None:
            shutil.copyfile(self.tokenizer.ranks_file, directory / QWEN_TIKTOKEN_FILE)

    @classmethod
    def from_qwen_v1(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | None = torch.bfloat16,
        max_length: int = 150,
        eod_tokens: int = 1,
    ) -> QwenTextEncoder:
        """Load a released `llm14b/` folder (QWen v1 config.json, weights, qwen.tiktoken) as Qwen2Model."""
        ckpt = QwenV1Checkpoint(folder)
        dtype = dtype or torch.bfloat16
        config = TextEncoderConfig(
            kind="qwen",
            dim=ckpt.arch["hidden_size"],
            max_length=max_length,
            eod_tokens=eod_tokens,
            dtype=_dtype_str(dtype),
            arch=ckpt.arch,
        )
        tokenizer = QwenTokenizer(ckpt.tokenizer_file())
        enc = cls._empty(config, tokenizer)
        sd = {s.name: ckpt.get(s.name).to(device=device, dtype=dtype) for s in ckpt.specs()}
        ckpt.release()
        _assign_strict(enc.model, sd, str(folder), device, dtype)
        return enc.eval()

    @classmethod
    def _empty(cls, config: TextEncoderConfig, tokenizer: QwenTokenizer | None) -> QwenTextEncoder:
        from transformers import Qwen2Config, Qwen2Model

        model = _build_empty(lambda: Qwen2Model(Qwen2Config(**config.arch)))
        return cls(config, tokenizer, model=model)

    @classmethod
    def _load_saved(cls, directory: Path, config: TextEncoderConfig, device, dtype: torch.dtype) -> QwenTextEncoder:
        tok_file = directory / QWEN_TIKTOKEN_FILE
        tokenizer = QwenTokenizer(tok_file) if tok_file.is_file() else None
        if tokenizer is None:
            log.warning("%s: no %s, the text encoder cannot tokenize", directory, QWEN_TIKTOKEN_FILE)
        enc = cls._empty(config, tokenizer)
        sd = dict(_iter_dir_tensors(directory, device))
        _assign_strict(enc.model, sd, str(directory), device, dtype)
        return enc.eval()


# --------------------------------------------------------------------------------------------
# T5


class T5TextEncoder(TextEncoder):
    """transformers `T5EncoderModel` + its tokenizer; the tokenizer's own `</s>` ends each prompt."""

    def __init__(self, config: TextEncoderConfig, tokenizer: Any = None, model: nn.Module | None = None) -> None:
        super().__init__()
        from transformers import T5Config, T5EncoderModel

        if config.kind != "t5":
            raise BadInputError(f"T5TextEncoder needs kind 't5', got {config.kind!r}")
        self.config = config
        self.tokenizer = tokenizer
        arch = T5Config(**config.arch)
        if arch.d_model != config.dim:
            raise BadInputError(f"text encoder dim {config.dim} != T5 d_model {arch.d_model}")
        self.model = model if model is not None else T5EncoderModel(arch)

    def pad_id(self) -> int:
        return int(getattr(self.tokenizer, "pad_token_id", 0) or 0)

    def tokenize(self, prompt: str) -> list[int]:
        if self.tokenizer is None:
            raise BadInputError("this T5 text encoder has no tokenizer loaded")
        return list(self.tokenizer(prompt, truncation=True, max_length=self.max_length)["input_ids"])

    def hidden_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state

    def _state_dict_to_save(self) -> dict[str, Tensor]:
        sd = dict(self.model.state_dict())
        sd.pop("encoder.embed_tokens.weight", None)  # the same tensor as shared.weight
        return sd

    def _save_extra(self, directory: Path) -> None:
        atomic_write_json(directory / "config.json", self.model.config.to_dict())
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory))

    @classmethod
    def _load_saved(cls, directory: Path, config: TextEncoderConfig, device, dtype: torch.dtype) -> T5TextEncoder:
        from transformers import AutoTokenizer, T5Config, T5EncoderModel

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(directory), model_max_length=config.max_length)
        except Exception as e:  # transformers raises many kinds here
            raise BadInputError(f"{directory}: cannot load the T5 tokenizer ({str(e).splitlines()[0][:200]})") from None
        model = _build_empty(lambda: T5EncoderModel(T5Config(**config.arch)))
        sd = {}
        for k, v in _iter_dir_tensors(directory, device):
            if k.startswith(("decoder.", "lm_head.")):  # a full T5 checkpoint: keep the encoder
                continue
            sd[k] = v
        if "shared.weight" in sd:
            sd.setdefault("encoder.embed_tokens.weight", sd["shared.weight"])
        _assign_strict(model, sd, str(directory), device, dtype)
        return cls(config, tokenizer, model=model).eval()


# --------------------------------------------------------------------------------------------
# byte-level encoder


class _ByteBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, attn_mask: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _is_word_byte(b: int) -> bool:
    """ASCII letters and digits, and every byte of a multi-byte UTF-8 character (so accented words stay whole)."""
    return 48 <= b <= 57 or 65 <= b <= 90 or 97 <= b <= 122 or b >= 128


def word_bucket_ids(ids: list[int], buckets: int) -> list[int]:
    """Per byte id: 1 + (32-bit FNV-1a hash of its lower-cased word) mod `buckets`; 0 outside words.

    A word is a maximal run of `_is_word_byte` bytes; EOD/PAD (>= 256) and other bytes get 0.
    """
    out = [0] * len(ids)
    i = 0
    while i < len(ids):
        if ids[i] > 255 or not _is_word_byte(ids[i]):
            i += 1
            continue
        j = i
        h = 0x811C9DC5
        while j < len(ids) and ids[j] <= 255 and _is_word_byte(ids[j]):
            b = ids[j] + 32 if 65 <= ids[j] <= 90 else ids[j]
            h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
            j += 1
        out[i:j] = [1 + h % buckets] * (j - i)
        i = j
    return out


class ByteTextEncoder(TextEncoder):
    """UTF-8 bytes (ids 0..255) + EOD (256) -> embedding + learned positions -> pre-norm transformer layers
    (bidirectional over the prompt's own tokens) -> LayerNorm. No vocabulary file; seeded init.

    With `word_buckets` > 0 every byte of a word also carries a hashed word embedding (the fastText idea without
    a vocabulary): a frozen, randomly initialised encoder then already tells "red" from "rod" at every byte, so
    a small model trained from scratch does not have to learn spelling inside the DiT before it can ground words.
    """

    EOD = 256
    PAD = 257

    def __init__(self, config: TextEncoderConfig) -> None:
        super().__init__()
        if config.kind != "byte":
            raise BadInputError(f"ByteTextEncoder needs kind 'byte', got {config.kind!r}")
        self.config = config
        d = config.dim
        self.embed = nn.Embedding(258, d)
        self.pos = nn.Embedding(config.max_length, d)
        # row 0: bytes outside words (kept at zero)
        self.word_embed = nn.Embedding(config.word_buckets + 1, d) if config.word_buckets else None
        hidden = max(1, int(round(d * config.mlp_ratio)))
        self.blocks = nn.ModuleList(_ByteBlock(d, config.heads, hidden) for _ in range(config.layers))
        self.norm = nn.LayerNorm(d)
        self.reset_parameters(config.seed)

    def reset_parameters(self, seed: int) -> None:
        """Deterministic init: embeddings N(0, 1), positions N(0, 0.1^2), linears N(0, 0.02^2), zero biases."""
        if any(p.is_meta for p in self.parameters()):
            return
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("word_embed."):
                    p.copy_(torch.randn(p.shape, generator=g))
                    p[0].zero_()
                    continue
                if name.startswith("embed."):
                    std = 1.0
                elif name.startswith("pos."):
                    std = 0.1
                elif "norm" in name:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                    continue
                elif name.endswith("bias"):
                    p.zero_()
                    continue
                else:
                    std = 0.02
                p.copy_(torch.randn(p.shape, generator=g) * std)

    def pad_id(self) -> int:
        return self.PAD

    def tokenize(self, prompt: str) -> list[int]:
        return list(prompt.encode("utf-8"))[: self.max_length - 1] + [self.EOD]

    def hidden_states(self, ids: Tensor, mask: Tensor) -> Tensor:
        n = ids.shape[1]
        x = self.embed(ids) + self.pos(torch.arange(n, device=ids.device))[None]
        if self.word_embed is not None:
            words = [word_bucket_ids(row, self.config.word_buckets) for row in ids.tolist()]
            x = x + self.word_embed(torch.tensor(words, device=ids.device))
        attn_mask = mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, attn_mask)
        return self.norm(x)

    @classmethod
    def _load_saved(cls, directory: Path, config: TextEncoderConfig, device, dtype: torch.dtype) -> ByteTextEncoder:
        model = _build_empty(lambda: cls(config))
        sd = dict(_iter_dir_tensors(directory, device))
        _assign_strict(model, sd, str(directory), device, dtype)
        return model.eval()


# --------------------------------------------------------------------------------------------
# build and load


def _dtype_str(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def build_text_encoder(
    config: TextEncoderConfig, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> TextEncoder:
    """A text encoder with fresh weights (random for qwen/t5, seeded for byte) and no tokenizer for qwen/t5."""
    dtype = dtype or config.torch_dtype
    if config.kind == "byte":
        if str(device) == "meta":
            enc: TextEncoder = _build_empty(lambda: ByteTextEncoder(config))  # type: ignore[assignment]
        else:
            enc = ByteTextEncoder(config)
    elif config.kind == "qwen":
        enc = QwenTextEncoder(config) if str(device) != "meta" else QwenTextEncoder._empty(config, None)
    else:
        if str(device) == "meta":
            from transformers import T5Config, T5EncoderModel

            enc = T5TextEncoder(config, None, model=_build_empty(lambda: T5EncoderModel(T5Config(**config.arch))))
        else:
            enc = T5TextEncoder(config)
    if str(device) != "meta":
        enc = enc.to(device=device, dtype=dtype)
    return enc.eval()


def load_text_encoder(
    directory: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    **overrides: Any,
) -> TextEncoder:
    """Load a text encoder folder: ours (`text_encoder.json`), a released QWen v1 `llm14b/`, or a T5 folder.

    overrides: TextEncoderConfig fields to change (e.g. eod_tokens=2, max_length=...).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BadInputError(f"{directory}: no such text encoder folder")
    cfg_file = directory / TEXT_CONFIG_FILE
    if cfg_file.is_file():
        try:
            data = json.loads(cfg_file.read_text())
        except json.JSONDecodeError as e:
            raise BadInputError(f"{cfg_file}: not valid JSON ({e.msg})") from None
        config = TextEncoderConfig.from_dict({**data, **overrides})
        dtype = dtype or config.torch_dtype
        config.dtype = _dtype_str(dtype)
        cls = {"qwen": QwenTextEncoder, "t5": T5TextEncoder, "byte": ByteTextEncoder}[config.kind]
        return cls._load_saved(directory, config, device, dtype)
    hf_cfg = directory / "config.json"
    if not hf_cfg.is_file():
        raise BadInputError(f"{directory}: neither {TEXT_CONFIG_FILE} nor config.json: not a text encoder folder")
    try:
        model_type = json.loads(hf_cfg.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise BadInputError(f"{hf_cfg}: not valid JSON ({e.msg})") from None
    if model_type == "qwen":
        allowed = {k: v for k, v in overrides.items() if k in ("max_length", "eod_tokens")}
        return QwenTextEncoder.from_qwen_v1(directory, device=device, dtype=dtype or torch.bfloat16, **allowed)
    if model_type in ("t5", "umt5"):
        from transformers import T5Config

        arch = T5Config.from_pretrained(str(directory)).to_dict()
        arch = {k: v for k, v in arch.items() if k not in ("architectures", "transformers_version", "model_type")}
        config = TextEncoderConfig(kind="t5", dim=int(arch["d_model"]), **{"max_length": 120, **overrides}, arch=arch)
        dtype = dtype or torch.float32
        config.dtype = _dtype_str(dtype)
        return T5TextEncoder._load_saved(directory, config, device, dtype)
    raise BadInputError(f"{hf_cfg}: model_type {model_type!r} is not a supported text encoder (qwen, t5)")


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

"""A local vision-language model through transformers: the Qwen2-VL / Qwen2.5-VL family, batched.

Qwen's own processor needs torchvision (its video half), which cannot live beside our CPU torch, so
the preprocessing is done here: `Qwen2VLImageProcessorPil` turns images into patches and
`image_grid_thw`, the chat text is written in Qwen's format, and each `<|image_pad|>` is expanded to
one token per merged patch (grid t*h*w / merge_size**2). A batch is left-padded; requests of one
batch that ask for different temperatures are generated in separate groups.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from vincie_cli.annotate.backends.base import Backend, PairRequest, Reply, load_image
from vincie_cli.annotate.prompt import build_messages
from vincie_cli.utils.io import UsageError
from vincie_cli.utils.log import get_logger

log = get_logger(__name__)

SUPPORTED = ("qwen2_vl", "qwen2_5_vl")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(
        self,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        batch_size: int = 4,
        max_tokens: int = 1024,
        image_size: int = 512,
        top_p: float = 0.9,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer, Qwen2VLImageProcessorPil

        if not model:
            raise UsageError("--model is required with --backend transformers (a local folder or a hub id)")
        if dtype not in DTYPES:
            raise UsageError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if dtype == "auto":
            dtype = "bfloat16" if device.startswith("cuda") else "float32"
        self.model = model
        self.device = device
        self.dtype = dtype
        self.batch_size = max(1, int(batch_size))
        self.concurrency = 1
        self.max_tokens = int(max_tokens)
        self.image_size = int(image_size)
        self.top_p = top_p
        self._lock = threading.Lock()
        try:
            config = AutoConfig.from_pretrained(model)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load model {model!r}: {str(e).splitlines()[0]}") from None
        if config.model_type not in SUPPORTED:
            raise UsageError(
                f"model {model!r} is a {config.model_type!r}; --backend transformers supports {', '.join(SUPPORTED)}"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.tokenizer.padding_side = "left"
        if Path(model, "preprocessor_config.json").is_file() or not Path(model).exists():
            self.image_processor = Qwen2VLImageProcessorPil.from_pretrained(model)
        else:
            self.image_processor = Qwen2VLImageProcessorPil()
        self.net = AutoModelForImageTextToText.from_pretrained(model, dtype=getattr(torch, dtype))
        self.net.to(device).eval()
        self.image_token_id = int(config.image_token_id)
        self.merge = int(self.image_processor.merge_size)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = getattr(config, "pad_token_id", None) or getattr(config.get_text_config(), "pad_token_id", None)
        self.pad_id = int(pad if pad is not None else 0)
        eos = self.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_ids = [int(eos)] if isinstance(eos, int) and eos >= 0 else None

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
        }

    # ----------------------------------------------------------------------------------------
    def chat_text(self, req: PairRequest) -> str:
        """The request in Qwen's chat format with one <|image_pad|> per image (expanded later)."""
        out = []
        for msg in build_messages(req.caption, req.retry_reason):
            content = msg["content"]
            if isinstance(content, str):
                body = content
            else:
                pieces = []
                for part in content:
                    if part["type"] == "image":
                        pieces.append("<|vision_start|><|image_pad|><|vision_end|>")
                    else:
                        pieces.append(part["text"] + ("\n" if part is not content[-1] else ""))
                body = "".join(pieces)
            out.append(f"<|im_start|>{msg['role']}\n{body}<|im_end|>\n")
        out.append("<|im_start|>assistant\n")
        return "".join(out)

    def encode(self, reqs: list[PairRequest]) -> dict[str, Any]:
        """Model inputs for a batch: left-padded ids with expanded image tokens, patches and grids."""
        import torch

        images = [load_image(p, self.image_size) for r in reqs for p in r.images]
        vis = self.image_processor(images=images, return_tensors="pt")
        grids = vis["image_grid_thw"]
        counts = [int(g.prod()) // (self.merge**2) for g in grids]
        seqs = []
        k = 0
        for r in reqs:
            ids = self.tokenizer(self.chat_text(r), add_special_tokens=False)["input_ids"]
            expanded: list[int] = []
            for t in ids:
                if t == self.image_token_id:
                    expanded.extend([t] * counts[k])
                    k += 1
                else:
                    expanded.append(t)
            seqs.append(expanded)
        if k != len(counts):
            raise RuntimeError(f"the prompt holds {k} image tokens for {len(counts)} images")
        n = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), n), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), n), dtype=torch.long)
        for i, s in enumerate(seqs):
            input_ids[i, n - len(s) :] = torch.tensor(s)
            mask[i, n - len(s) :] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": mask,
            "pixel_values": vis["pixel_values"],
            "image_grid_thw": grids,
        }

    def _run(self, reqs: list[PairRequest], temperature: float) -> list[str]:
        import torch

        inputs = self.encode(reqs)
        dtype = getattr(torch, self.dtype)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        gen: dict[str, Any] = {"max_new_tokens": self.max_tokens, "pad_token_id": self.pad_id}
        if self.eos_ids:
            gen["eos_token_id"] = self.eos_ids
        if temperature > 0:
            gen.update(do_sample=True, temperature=temperature, top_p=self.top_p)
        else:
            gen.update(do_sample=False)
        with torch.inference_mode():
            out = self.net.generate(**inputs, **gen)
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new, skip_special_tokens=True)

    def generate(self, requests: list[PairRequest]) -> list[Reply]:
        replies: list[Reply | None] = [None] * len(requests)
        groups: dict[float, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.temperature, []).append(i)
        with self._lock:
            for temperature, idx in groups.items():
                texts = self._run([requests[i] for i in idx], temperature)
                for i, text in zip(idx, texts):
                    replies[i] = Reply(text=text, requests=1)
        return replies  # type: ignore[return-value]

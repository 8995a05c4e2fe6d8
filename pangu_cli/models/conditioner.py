"""The conditioner: prompt + size bucket → cross-attention `context` and vector `y`, as the reference's
`GeneralConditioner` assembles them.

Embedders run in manifest order. Every text embedder contributes its token features to `context`
(concatenated along channels: PanGu-Draw 3.0 gives 768 + 1280 = 2048) and, when it is flagged
`pooled`, its pooled feature to `y`; the size embedder appends the sinusoidal embedding of the
bucket *index* (not H, W) to `y` last (PanGu-Draw 3.0: 1280 + 256 = 1536).

Parameter names follow the reference checkpoints under `conditioner.`: `embedders.N.transformer.*`
for Hugging Face CLIP towers, `embedders.N.model.*` for OpenCLIP and BERT towers.
"""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import numpy as np
from mindspore import nn

from pangu_cli.errors import ModelError
from pangu_cli.models.layers import timestep_embedding
from pangu_cli.models.text_encoders import BertTextEncoder, HFCLIPTextEncoder, OpenCLIPTextEncoder
from pangu_cli.models.tokenizers import encode, load_clip_tokenizer, load_wordpiece_tokenizer

ENCODERS = {"hf_clip": (HFCLIPTextEncoder, "transformer"),
            "openclip": (OpenCLIPTextEncoder, "model"),
            "bert": (BertTextEncoder, "model")}
TOKENIZER_LOADERS = {"clip": load_clip_tokenizer, "wordpiece": load_wordpiece_tokenizer}


class TextEmbedder(nn.Cell):
    """One text tower under the attribute name the reference checkpoint uses for it."""

    def __init__(self, kind: str, config: dict, layer: str | None = None):
        super().__init__()
        if kind not in ENCODERS:
            raise ModelError(f"unknown text encoder kind '{kind}'", f"use one of: {', '.join(ENCODERS)}")
        cls, self.attr = ENCODERS[kind]
        self.kind = kind
        kwargs = dict(config)
        if layer is not None and kind != "bert":
            kwargs["layer"] = layer
        try:
            tower = cls(**kwargs)
        except TypeError as exc:
            raise ModelError(f"bad {kind} text encoder config: {exc}", "check model.json") from exc
        setattr(self, self.attr, tower)

    @property
    def tower(self):
        return getattr(self, self.attr)

    def construct(self, ids, attention_mask):
        if self.kind == "bert":
            return self.tower(ids, attention_mask)
        return self.tower(ids)


@dataclass
class Conditioning:
    """Per-text conditioning as numpy: context (B, L, D), y (B, V) or None; truncation notes per text."""

    context: np.ndarray
    y: np.ndarray | None
    truncated: list[list[str]]

    def as_cond(self) -> dict:
        return {"context": self.context, "y": self.y}


class Conditioner(nn.Cell):
    def __init__(self, text_encoders: list[dict], size_embed_dim: int | None = 256):
        super().__init__()
        self.specs = [dict(spec) for spec in text_encoders]
        self.embedders = nn.CellList([TextEmbedder(s["kind"], s.get("config", {}), s.get("layer"))
                                      for s in self.specs])
        self.size_embed_dim = size_embed_dim
        self.tokenizers: list = []

    def load_tokenizers(self, resolve_path) -> None:
        """Load each encoder's tokenizer from local files; `resolve_path` maps manifest paths to files."""
        self.tokenizers = []
        for spec in self.specs:
            tok = spec["tokenizer"]
            if tok["kind"] not in TOKENIZER_LOADERS:
                raise ModelError(f"unknown tokenizer kind '{tok['kind']}'", "use 'clip' or 'wordpiece'")
            self.tokenizers.append(TOKENIZER_LOADERS[tok["kind"]](resolve_path(tok["path"])))

    def context_length(self) -> int:
        return int(self.specs[0].get("max_length", 77))

    def encode(self, texts: list[str], bucket_index: int) -> Conditioning:
        """Encode a batch of texts (all with the same size bucket) in one pass per encoder."""
        if not self.tokenizers:
            raise ModelError("the conditioner has no tokenizers loaded", "call load_tokenizers first")
        contexts, vectors = [], []
        truncated: list[list[str]] = [[] for _ in texts]
        for spec, embedder, tokenizer in zip(self.specs, self.embedders, self.tokenizers):
            batch = encode(tokenizer, texts, max_length=int(spec.get("max_length", 77)),
                           kind=spec["tokenizer"]["kind"])
            for i, cut in enumerate(batch.truncated):
                if cut:
                    truncated[i].append(f"{spec.get('language') or spec['kind']}: {cut}")
            context, pooled = embedder(ms.Tensor(batch.ids), ms.Tensor(batch.attention_mask))
            contexts.append(context.asnumpy())
            if spec.get("pooled"):
                vectors.append(pooled.asnumpy())
        if self.size_embed_dim:
            index = ms.Tensor(np.full((len(texts),), bucket_index, np.float32))
            vectors.append(timestep_embedding(index, self.size_embed_dim).asnumpy())
        lengths = {c.shape[1] for c in contexts}
        if len(lengths) != 1:
            raise ModelError(f"text encoders disagree on sequence length {sorted(lengths)}",
                             "give every encoder the same max_length in model.json")
        context = np.concatenate(contexts, axis=-1).astype(np.float32)
        y = np.concatenate(vectors, axis=-1).astype(np.float32) if vectors else None
        return Conditioning(context, y, truncated)

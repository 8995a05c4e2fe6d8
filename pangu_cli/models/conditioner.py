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
from mindspore import nn, ops

from pangu_cli.errors import ModelError
from pangu_cli.models.layers import timestep_embedding
from pangu_cli.models.text_encoders import BertTextEncoder, HFCLIPTextEncoder, OpenCLIPTextEncoder
from pangu_cli.models.tokenizers import (TokenizedBatch, encode, load_clip_tokenizer,
                                         load_jieba_tokenizer, load_wordpiece_tokenizer)

ENCODERS = {"hf_clip": (HFCLIPTextEncoder, "transformer"),
            "openclip": (OpenCLIPTextEncoder, "model"),
            "bert": (BertTextEncoder, "model")}
TOKENIZER_LOADERS = {"clip": load_clip_tokenizer, "wordpiece": load_wordpiece_tokenizer,
                     "jieba": load_jieba_tokenizer}


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


ROUTINGS = ("all", "language")
CONCATS = ("channels", "sequence")


class Conditioner(nn.Cell):
    """Text towers + size embedding.

    `routing="all"` gives every encoder the whole prompt (the reference). `routing="language"` gives
    an encoder whose spec names a `language` only the spans `pangu_cli.language.detect` routes to that
    language (the embedded model; style trigger characters are Chinese and reach the zh encoder).
    `concat="channels"` joins the encoders' token features along channels (the reference: 768 + 1280);
    `concat="sequence"` appends their token sequences (equal widths), which suits routed spans.

    Tokenizing is plain Python (`tokenize`); `construct` is differentiable MindSpore, so the trainer
    can train the text towers with the UNet; `encode` does both for inference.
    """

    def __init__(self, text_encoders: list[dict], size_embed_dim: int | None = 256, routing: str = "all",
                 concat: str = "channels"):
        super().__init__()
        if routing not in ROUTINGS:
            raise ModelError(f"unknown conditioning routing '{routing}'", f"use one of: {', '.join(ROUTINGS)}")
        if concat not in CONCATS:
            raise ModelError(f"unknown context concatenation '{concat}'", f"use one of: {', '.join(CONCATS)}")
        self.specs = [dict(spec) for spec in text_encoders]
        self.embedders = nn.CellList([TextEmbedder(s["kind"], s.get("config", {}), s.get("layer"))
                                      for s in self.specs])
        self.size_embed_dim = size_embed_dim
        self.routing = routing
        self.concat = concat
        self.tokenizers: list = []

    def load_tokenizers(self, resolve_path) -> None:
        """Load each encoder's tokenizer from local files; `resolve_path` maps manifest paths to files."""
        self.tokenizers = []
        for spec in self.specs:
            tok = spec["tokenizer"]
            if tok["kind"] not in TOKENIZER_LOADERS:
                raise ModelError(f"unknown tokenizer kind '{tok['kind']}'",
                                 f"use one of: {', '.join(TOKENIZER_LOADERS)}")
            self.tokenizers.append(TOKENIZER_LOADERS[tok["kind"]](resolve_path(tok["path"])))

    def routed_texts(self, texts: list[str]) -> list[list[str]]:
        """The text each encoder reads, per encoder."""
        if self.routing == "all":
            return [list(texts) for _ in self.specs]
        from pangu_cli.language import detect

        detections = [detect(t) if t.strip() else None for t in texts]
        routed = []
        for spec in self.specs:
            lang = spec.get("language")
            routed.append([t if lang is None else (d.joined(lang) if d else "") for t, d in zip(texts, detections)])
        return routed

    def tokenize(self, texts: list[str]) -> tuple[list[TokenizedBatch], list[list[str]]]:
        """Token batches per encoder, and per text the notes on what was cut to fit."""
        if not self.tokenizers:
            raise ModelError("the conditioner has no tokenizers loaded", "call load_tokenizers first")
        batches, truncated = [], [[] for _ in texts]
        for spec, tokenizer, routed in zip(self.specs, self.tokenizers, self.routed_texts(texts)):
            batch = encode(tokenizer, routed, max_length=int(spec.get("max_length", 77)),
                           kind=spec["tokenizer"]["kind"])
            for i, cut in enumerate(batch.truncated):
                if cut:
                    truncated[i].append(f"{spec.get('language') or spec['kind']}: {cut}")
            batches.append(batch)
        return batches, truncated

    def construct(self, tokens, bucket_index):
        """`tokens`: a tuple (ids_0, mask_0, ids_1, mask_1, …) of int32 Tensors; `bucket_index`: (B,)."""
        contexts, vectors = [], []
        for i, embedder in enumerate(self.embedders):
            context, pooled = embedder(tokens[2 * i], tokens[2 * i + 1])
            contexts.append(context)
            if self.specs[i].get("pooled"):
                vectors.append(pooled)
        if self.size_embed_dim:
            vectors.append(timestep_embedding(bucket_index, self.size_embed_dim).astype(contexts[0].dtype))
        context = ops.cat(contexts, axis=1 if self.concat == "sequence" else -1)
        y = ops.cat(vectors, axis=-1) if vectors else None
        return context, y

    def token_tensors(self, batches: list[TokenizedBatch]) -> tuple:
        return tuple(ms.Tensor(a) for b in batches for a in (b.ids, b.attention_mask))

    def encode(self, texts: list[str], bucket_index: int) -> Conditioning:
        """Encode a batch of texts (all with the same size bucket) in one pass per encoder."""
        batches, truncated = self.tokenize(texts)
        lengths = {b.ids.shape[1] for b in batches}
        widths = {c for c in self.context_widths()}
        if self.concat == "channels" and len(lengths) != 1:
            raise ModelError(f"text encoders disagree on sequence length {sorted(lengths)}",
                             "give every encoder the same max_length in model.json")
        if self.concat == "sequence" and len(widths) != 1:
            raise ModelError(f"text encoders disagree on width {sorted(widths)}",
                             "sequence concatenation needs encoders of equal width")
        index = ms.Tensor(np.full((len(texts),), bucket_index, np.float32))
        context, y = self(self.token_tensors(batches), index)
        return Conditioning(context.asnumpy().astype(np.float32),
                            None if y is None else y.asnumpy().astype(np.float32), truncated)

    def context_widths(self) -> list[int]:
        widths = []
        for spec in self.specs:
            config = spec.get("config", {})
            widths.append(int(config.get("width") or config.get("hidden_size") or 0))
        return widths

"""Build a model's networks from its manifest and load its checkpoints, strictly.

Key layout (the reference's): `model.diffusion_model.` (UNet), `conditioner.` (text towers),
`first_stage_model.` (autoencoder). The texture checkpoint carries all three, the structure
checkpoint one more UNet. Text-encoder and autoencoder weights may also come as separate files
(manifest roles `text_encoders`, `vae`); files of one group merge in order, later files win, as the
reference merges its checkpoint list. Anything else in a checkpoint is an error, as is anything
missing, with three exceptions the reference also tolerates: training bookkeeping scalars
(`global_step`, …), the conditioner/autoencoder keys of the structure checkpoint (the reference's
high-timestep engine has no such cells), and the buffers MindONE stores as Parameters (CLIP
`position_ids`, OpenCLIP `attn_mask`), which are checked against what we compute and then dropped.

Checkpoints are read one tensor at a time through an index of where each tensor lies in its file
(MindSpore `.ckpt` protobuf or `.safetensors`), so loading needs the networks plus one tensor, not
the networks plus whole files; networks whose every parameter comes from a checkpoint are built
without initialising their parameters.

Memory modes (`load_model`): both UNets resident (default); `offload` keeps one UNet Cell and
swaps the other expert's weights in at the switch (from host RAM on an accelerator, from the file
on CPU); `lazy_texture` reads the texture UNet at its first step (keys are still checked up front).
`precision` fp16/bf16 stores UNet and text-tower weights in that type (norms stay fp32) and runs
them at AMP level O2 as the reference does; the autoencoder stays fp32.
"""

from __future__ import annotations

import json
import os
import struct
import time
import types
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from pangu_cli.errors import CheckpointError, DeviceError, ModelError
from pangu_cli.models.checkpoint import check_keys
from pangu_cli.models.conditioner import Conditioner
from pangu_cli.models.registry import ModelSpec
from pangu_cli.models.unet import UNetModel
from pangu_cli.models.vae import AutoencoderKL

UNET_PREFIX = "model.diffusion_model."
CONDITIONER_PREFIX = "conditioner."
VAE_PREFIX = "first_stage_model."
ROLES = ("structure", "texture")  # noisiest range first
TEXTURE_GROUP = ("texture", "text_encoders", "vae")  # files that together fill conditioner, VAE, texture UNet
# Top-level scalars MindSpore training writes beside the weights; the reference ignores them when loading.
BOOKKEEPING_KEYS = frozenset({"global_step", "global_steps", "epoch_num", "step_num", "loss_scale", "scale_sense",
                              "current_iterator_step", "last_overflow_iterator_step", "learning_rate"})
OFFLOAD_ENV = "PANGU_OFFLOAD"
_VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")


# ---------------------------------------------------------------------------------------------------------------
# Tensor index: where each tensor of a checkpoint lies, read on demand


@dataclass(frozen=True)
class TensorRef:
    """One tensor in a checkpoint file: shape, stored dtype, and the byte ranges holding its data."""

    file: Path
    shape: tuple[int, ...]
    dtype: str  # a numpy dtype name, or "bfloat16"
    chunks: tuple[tuple[int, int], ...]  # (offset, length); MindSpore splits tensors > 512 MB

    @property
    def nbytes(self) -> int:
        return sum(length for _, length in self.chunks)

    def read(self, handle=None) -> np.ndarray:
        """The tensor as numpy (bfloat16 widened to float32, which holds it exactly)."""
        data = np.empty(self.nbytes, np.uint8)  # not bytearray: no zero-filling of gigabytes about to be read
        view = memoryview(data)
        with (nullcontext(handle) if handle is not None else open(self.file, "rb")) as fh:
            at = 0
            for offset, length in self.chunks:
                fh.seek(offset)
                if fh.readinto(view[at:at + length]) != length:
                    raise _unreadable(self.file, "the file ends inside a tensor")
                at += length
        if self.dtype == "bfloat16":
            bits = data.view("<u2").astype(np.uint32) << 16
            return bits.view(np.float32).reshape(self.shape)
        return data.view(np.dtype(self.dtype).newbyteorder("<")).reshape(self.shape)


def read_tensors(refs: dict[str, TensorRef]) -> Iterator[tuple[str, np.ndarray]]:
    """Read many tensors, one file handle per file, in file order (sequential I/O)."""
    by_file: dict[Path, list[tuple[str, TensorRef]]] = {}
    for key, ref in refs.items():
        by_file.setdefault(ref.file, []).append((key, ref))
    for file, items in by_file.items():
        items.sort(key=lambda item: item[1].chunks[0][0] if item[1].chunks else 0)
        with open(file, "rb") as fh:
            for key, ref in items:
                yield key, ref.read(fh)


def _unreadable(path: Path, reason: str) -> ModelError:
    return ModelError(f"cannot read checkpoint {path.name}: {reason}",
                      "the file is corrupt or truncated; copy it again")


def index_checkpoint(path: str | os.PathLike) -> dict[str, TensorRef]:
    """Key → TensorRef for a MindSpore `.ckpt` or a `.safetensors` file, reading headers only."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".ckpt", ".safetensors"):
        raise ModelError(f"unsupported checkpoint format '{path.name}'", "use a MindSpore .ckpt or a .safetensors file")
    if not path.is_file():
        raise ModelError(f"checkpoint not found: {path}", "check the path, or run `pangu models`")
    if path.stat().st_size == 0:
        raise _unreadable(path, "the file is empty")
    try:
        return _index_safetensors(path) if suffix == ".safetensors" else _index_ckpt(path)
    except ModelError:
        raise
    except (OSError, ValueError, UnicodeDecodeError, EOFError, struct.error) as exc:
        raise _unreadable(path, str(exc) or type(exc).__name__) from exc


_SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                       "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def _index_safetensors(path: Path) -> dict[str, TensorRef]:
    size = path.stat().st_size
    with open(path, "rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
        if header_len > size - 8:
            raise ValueError("the header is longer than the file")
        header = json.loads(fh.read(header_len).decode("utf-8"))
    base = 8 + header_len
    index = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        if entry["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"tensor {key} has the unsupported dtype {entry['dtype']}")
        start, stop = entry["data_offsets"]
        if base + stop > size:
            raise ValueError(f"tensor {key} lies beyond the end of the file")
        index[key] = TensorRef(path, tuple(entry["shape"]), _SAFETENSORS_DTYPES[entry["dtype"]],
                               ((base + start, stop - start),))
    return index


_CKPT_DTYPES = {"Float64": "float64", "Float32": "float32", "Float16": "float16", "BFloat16": "bfloat16",
                "Int64": "int64", "Int32": "int32", "Int16": "int16", "Int8": "int8", "UInt64": "uint64",
                "UInt32": "uint32", "UInt16": "uint16", "UInt8": "uint8", "Bool": "bool"}
_CRC_TRAILER = b"crc_num"  # MindSpore's optional trailer: b"crc_num" + 10 bytes


def _varint(fh) -> int:
    result = shift = 0
    while True:
        byte = fh.read(1)
        if not byte:
            raise EOFError("the file ends inside a record header")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
        if shift > 63:
            raise ValueError("malformed record header")


def _skip(fh, wire_type: int) -> None:
    if wire_type == 0:
        _varint(fh)
    elif wire_type == 1:
        fh.seek(8, 1)
    elif wire_type == 2:
        fh.seek(_varint(fh), 1)
    elif wire_type == 5:
        fh.seek(4, 1)
    else:
        raise ValueError(f"malformed record (wire type {wire_type})")


def _index_ckpt(path: Path) -> dict[str, TensorRef]:
    """Scan MindSpore's checkpoint protobuf (`Checkpoint { repeated Value value = 1 }`, `Value { tag = 1;
    TensorProto tensor = 2 }`, `TensorProto { dims = 1; tensor_type = 2; tensor_content = 3 }`), skipping the
    tensor bytes. Consecutive values with one tag are slices of one tensor along axis 0, concatenated."""
    size = path.stat().st_size
    index: dict[str, TensorRef] = {}
    with open(path, "rb") as fh:
        end = size
        if size >= 17:
            fh.seek(size - 17)
            if fh.read(7) == _CRC_TRAILER:
                end = size - 17
            fh.seek(0)
        last_tag = None
        while fh.tell() < end:
            key = _varint(fh)
            if key != (1 << 3 | 2):
                raise ValueError(f"not a MindSpore checkpoint (unexpected field at byte {fh.tell()})")
            length = _varint(fh)
            stop = fh.tell() + length
            if stop > end:
                raise ValueError("the file ends inside a record")
            tag, tensor = _read_value(fh, stop)
            fh.seek(stop)
            if tag is None:
                raise ValueError("a record has no name")
            if tensor is None:
                raise ValueError(f"'{tag}' is not a plain tensor (map tensors are not supported)")
            dims, type_name, chunk = tensor
            if type_name == "str":  # a string entry: metadata, never a weight
                last_tag = tag
                continue
            if type_name not in _CKPT_DTYPES:
                raise ValueError(f"'{tag}' has the unsupported type {type_name}")
            shape = () if dims in ([], [0]) else tuple(dims)
            if tag == last_tag and tag in index:
                previous = index[tag]
                index[tag] = TensorRef(path, previous.shape, previous.dtype, previous.chunks + (chunk,))
            else:
                index[tag] = TensorRef(path, shape, _CKPT_DTYPES[type_name], (chunk,))
            last_tag = tag
    for tag, ref in index.items():
        itemsize = 2 if ref.dtype == "bfloat16" else np.dtype(ref.dtype).itemsize
        expected = int(np.prod(ref.shape, dtype=np.int64)) * itemsize
        if ref.nbytes != expected:
            raise ValueError(f"'{tag}' holds {ref.nbytes} bytes, its shape {ref.shape} needs {expected}")
    return index


def _read_value(fh, stop: int):
    tag, tensor = None, None
    while fh.tell() < stop:
        key = _varint(fh)
        field_no, wire_type = key >> 3, key & 7
        if field_no == 1 and wire_type == 2:
            tag = fh.read(_varint(fh)).decode("utf-8")
        elif field_no == 2 and wire_type == 2:
            length = _varint(fh)
            tensor = _read_tensor_proto(fh, fh.tell() + length)
        else:
            _skip(fh, wire_type)
    return tag, tensor


def _read_tensor_proto(fh, stop: int):
    dims: list[int] = []
    type_name, chunk = None, None
    while fh.tell() < stop:
        key = _varint(fh)
        field_no, wire_type = key >> 3, key & 7
        if field_no == 1 and wire_type == 0:
            dims.append(_varint(fh))
        elif field_no == 1 and wire_type == 2:  # packed dims
            length = _varint(fh)
            packed_end = fh.tell() + length
            while fh.tell() < packed_end:
                dims.append(_varint(fh))
        elif field_no == 2 and wire_type == 2:
            type_name = fh.read(_varint(fh)).decode("utf-8")
        elif field_no == 3 and wire_type == 2:
            length = _varint(fh)
            chunk = (fh.tell(), length)
            fh.seek(length, 1)
        else:
            _skip(fh, wire_type)
    fh.seek(stop)
    if type_name is None or chunk is None:
        raise ValueError("a tensor record lacks its type or data")
    return dims, type_name, chunk


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint groups → per-network key sets


@dataclass
class CheckpointParts:
    """The tensors of one checkpoint group split by network, keys relative to the network's prefix."""

    parts: dict[str, dict[str, TensorRef]]
    sources: dict[str, list[str]]  # prefix → names of the files that contributed
    notes: list[str] = field(default_factory=list)

    def label(self, prefix: str) -> str:
        return ", ".join(self.sources.get(prefix, [])) or "no file"


def _stray_error(file: Path, stray: list[str], prefixes: Iterable[str]) -> CheckpointError:
    return CheckpointError(f"{file.name}: {len(stray)} unexpected keys outside {', '.join(prefixes)} "
                           f"(e.g. {', '.join(sorted(stray)[:5])})",
                           "check that the file belongs to this model (model.json's checkpoint_ignore lists "
                           "key prefixes to skip, e.g. an EMA copy)")


def _tower_attrs(spec: ModelSpec) -> dict[str, int]:
    """Attribute name of each text tower (`transformer` / `model`) → embedder index, where unambiguous."""
    from pangu_cli.models.conditioner import ENCODERS

    attrs: dict[str, list[int]] = {}
    for i, enc in enumerate(spec.manifest.get("text_encoders", [])):
        if enc.get("kind") in ENCODERS:
            attrs.setdefault(ENCODERS[enc["kind"]][1], []).append(i)
    return {attr: ids[0] for attr, ids in attrs.items() if len(ids) == 1}


def _normalise(index: dict[str, TensorRef], role: str, file: Path, spec: ModelSpec,
               notes: list[str]) -> dict[str, TensorRef]:
    """Full reference keys for one file of a role; strays are an error naming the file."""
    has_vae = bool(spec.manifest.get("vae"))
    ignore = tuple(spec.manifest.get("checkpoint_ignore", ()))
    allowed = {"texture": (UNET_PREFIX, CONDITIONER_PREFIX) + ((VAE_PREFIX,) if has_vae else ()),
               "structure": (UNET_PREFIX,), "text_encoders": (CONDITIONER_PREFIX,), "vae": (VAE_PREFIX,)}[role]
    towers = _tower_attrs(spec) if role == "text_encoders" else {}
    out, stray, dropped = {}, [], 0
    for key, ref in index.items():
        if key in BOOKKEEPING_KEYS or (ignore and key.startswith(ignore)):
            continue
        if key.startswith(allowed):
            out[key] = ref
        elif role == "structure" and key.startswith((CONDITIONER_PREFIX, VAE_PREFIX)):
            dropped += 1  # the reference's high-timestep engine has no conditioner or VAE to load them into
        elif role == "text_encoders" and key.startswith("embedders."):
            out[CONDITIONER_PREFIX + key] = ref
        elif role == "text_encoders" and key.split(".", 1)[0] in towers:
            out[f"{CONDITIONER_PREFIX}embedders.{towers[key.split('.', 1)[0]]}.{key}"] = ref
        elif role == "vae" and key.startswith(_VAE_ROOTS):
            out[VAE_PREFIX + key] = ref
        else:
            stray.append(key)
    if stray:
        raise _stray_error(file, stray, allowed)
    if dropped:
        notes.append(f"{file.name}: ignored {dropped} conditioner/autoencoder keys (the structure model uses "
                     "only its UNet, as in the reference)")
    return out


def checkpoint_parts(spec: ModelSpec, group: str) -> CheckpointParts:
    """Index the files of `group` ("texture": texture + text_encoders + vae files; "structure") and split them."""
    roles = TEXTURE_GROUP if group == "texture" else (group,)
    prefixes = (UNET_PREFIX, CONDITIONER_PREFIX, VAE_PREFIX)
    parts: dict[str, dict[str, TensorRef]] = {p: {} for p in prefixes}
    sources: dict[str, list[str]] = {}
    notes: list[str] = []
    for role in roles:
        for file in spec.checkpoint_files(role):
            for key, ref in _normalise(index_checkpoint(file), role, file, spec, notes).items():
                prefix = next(p for p in prefixes if key.startswith(p))
                parts[prefix][key[len(prefix):]] = ref
                if file.name not in sources.setdefault(prefix, []):
                    sources[prefix].append(file.name)
    if group == "texture":
        _drop_stored_buffers(spec, parts[CONDITIONER_PREFIX], notes)
    return CheckpointParts(parts, sources, notes)


def _drop_stored_buffers(spec: ModelSpec, refs: dict[str, TensorRef], notes: list[str]) -> None:
    """MindONE keeps CLIP's `position_ids` and OpenCLIP's causal `attn_mask` as Parameters, so its checkpoints
    hold them; we compute both. Check that the stored ones are what we compute, then drop them."""
    for i, enc in enumerate(spec.manifest.get("text_encoders", [])):
        if enc.get("kind") == "hf_clip":
            key = f"embedders.{i}.transformer.text_model.embeddings.position_ids"
            if key in refs:
                ids = refs.pop(key).read().reshape(-1)
                if not np.array_equal(ids, np.arange(ids.size)):
                    raise CheckpointError(f"{key} is not 0, 1, 2, …: this encoder would need stored position ids",
                                          "the checkpoint does not match the reference's CLIP text tower")
        elif enc.get("kind") == "openclip":
            key = f"embedders.{i}.model.attn_mask"
            if key in refs:
                mask = refs.pop(key).read().astype(np.float32)
                upper = np.triu(np.ones(mask.shape, bool), k=1)
                if mask.ndim != 2 or mask.shape[0] != mask.shape[1] or np.any(mask[~upper] != 0) \
                        or np.any(mask[upper] > -1e4):
                    raise CheckpointError(f"{key} is not a causal mask",
                                          "the checkpoint does not match the reference's OpenCLIP text tower")


# ---------------------------------------------------------------------------------------------------------------
# Networks


@dataclass
class LoadedModel:
    spec: ModelSpec
    conditioner: Conditioner
    unets: dict[str, UNetModel]  # the UNet Cells materialised so far (all of them unless lazy / offload)
    vae: AutoencoderKL | None
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    bank: "UNetBank | None" = None

    @property
    def experts(self) -> list[tuple[str, Callable]]:
        """(role, UNet callable) in schedule order; lazy / offloaded experts load at their first call."""
        if self.bank is None:
            return [(role, self.unets[role]) for role in ROLES if role in self.unets]
        return [(role, self.bank.expert(role)) for role in ROLES if role in self.bank.roles]


def build_conditioner(spec: ModelSpec) -> Conditioner:
    size = spec.manifest.get("size_embedding", {}).get("dim")
    options = spec.manifest.get("conditioning", {})  # routing / concat; the reference's defaults when absent
    return Conditioner(spec.manifest["text_encoders"], size_embed_dim=size, **options)


def build_vae(spec: ModelSpec) -> AutoencoderKL | None:
    vae = spec.manifest.get("vae")
    return AutoencoderKL(**vae) if vae else None


def build_unet(spec: ModelSpec) -> UNetModel:
    return UNetModel(**spec.manifest["unet"])


def without_init():
    """Build parameters without initial values (they come from a checkpoint): no time, no memory."""
    try:
        from mindspore.nn.utils import no_init_parameters
    except ImportError:  # removed in a later MindSpore: building initialises, which is only slower
        return nullcontext()
    return no_init_parameters()


@contextmanager
def _plain_kernels(active: bool) -> Iterator[None]:
    """Build with MindSpore's own ops: pangu's fast CPU kernels (`fast_ops`) take fp32 weights only."""
    try:
        from pangu_cli.models import fast_ops
    except ImportError:
        fast_ops = None
    if not active or fast_ops is None or not fast_ops.enabled():
        yield
        return
    fast_ops.set_enabled(False)
    try:
        yield
    finally:
        fast_ops.set_enabled(True)


def _built(spec: ModelSpec, factory: Callable, half: object = None):
    """A network of `spec` with uninitialised parameters (every one is then checked and read from a file);
    `half`: it will hold half-precision weights."""
    try:
        with without_init(), _plain_kernels(half is not None):
            return factory(spec)
    except ModelError:
        raise
    except (TypeError, ValueError, KeyError) as exc:
        raise ModelError(f"model '{spec.name}' has an invalid network config: {exc}", "check model.json") from exc


def _shapes(cell) -> dict[str, tuple]:
    return {name: tuple(param.shape) for name, param in cell.parameters_and_names()}


_NORMS: tuple = ()


def _norm_types() -> tuple:
    global _NORMS
    if not _NORMS:
        from mindspore import nn

        _NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return _NORMS


def _norm_params(cell) -> set[str]:
    names = set()
    for path, sub in cell.cells_and_names():
        if isinstance(sub, _norm_types()):
            names.update(f"{path}.{name}" if path else name for name, _ in sub.parameters_and_names())
    return names


class ParamTable:
    """A Cell's parameters by checkpoint name, with the dtype each is stored in: `half` for float weights when
    given, fp32 for norms (as the reference's O2)."""

    def __init__(self, cell, half=None):
        import mindspore as ms

        self.params = dict(cell.parameters_and_names())
        keep = _norm_params(cell) if half is not None else set()
        self.filled = False  # set after the first complete fill
        self.dtypes = {}
        for name, param in self.params.items():
            floating = param.dtype in (ms.float32, ms.float16, ms.bfloat16, ms.float64)
            self.dtypes[name] = half if (half is not None and floating and name not in keep) else param.dtype

    def shapes(self) -> dict[str, tuple]:
        return {name: tuple(param.shape) for name, param in self.params.items()}

    def fill(self, arrays: Iterable[tuple[str, np.ndarray]], keep: dict | None = None) -> None:
        """Set every parameter from (name, array) pairs; `keep` collects host copies in the stored dtype."""
        import mindspore as ms

        first = not self.filled
        for name, array in arrays:
            param, dtype = self.params[name], self.dtypes[name]
            tensor = ms.Tensor(array, dtype=dtype)
            if first:
                if param.dtype != dtype:
                    param.set_dtype(dtype)
                param.set_data(tensor)
            else:
                # A refill (offload swap) writes in place: a compiled graph (ms.jit) keeps using the storage it
                # was compiled with and would not see a replaced tensor; in place also reuses device memory.
                param.copy_(tensor)
            if keep is not None:
                keep[name] = array.astype(np.float16, copy=False) if dtype == ms.float16 else array
        self.filled = True


def load_checked(cell, refs: dict[str, TensorRef], what: str, half=None) -> ParamTable:
    """Check `refs` against `cell` (names and shapes, strictly), then fill it one tensor at a time."""
    table = ParamTable(cell, half)
    check_keys(table.shapes(), refs, what)
    table.fill(read_tensors(refs))
    return table


# ---------------------------------------------------------------------------------------------------------------
# Precision and device options


def mixed_precision(cell, dtype) -> None:
    """AMP level O2 below `cell`, in place: its children compute in `dtype`; norms compute in fp32, as with
    MindONE's `auto_mixed_precision` (MindSpore's black list, whose cells are wrapped to give `dtype` outputs,
    plus GroupNorm). GroupNorm is switched in place, unwrapped, because pangu's GroupNorm is also called
    through its fused `forward_silu` method. MindSpore 2.10 casts the inputs of every op run inside a `to_float`
    cell, so `cell`'s own construct is left in fp32: that keeps the UNet's sinusoidal timestep embedding in fp32,
    as the reference computes it."""
    import mindspore as ms
    from mindspore import nn
    from mindspore.train.amp import AMP_BLACK_LIST, _auto_black_list, _OutputTo16

    black = list(AMP_BLACK_LIST)
    for name, child in list(cell.name_cells().items()):
        if isinstance(child, tuple(black)):
            cell._cells[name] = _OutputTo16(child.to_float(ms.float32), dtype)
        else:
            _auto_black_list(child, black, dtype)
    for _, sub in cell.cells_and_names():
        if isinstance(sub, nn.GroupNorm):
            sub.to_float(ms.float32)


def _flash_cross_attention(self, x, context=None):
    """`CrossAttention.construct` with MindSpore's fused kernel where MindONE used one: both sequence lengths
    multiples of 16, head width ≤ 256, half precision (so cross-attention over 77 tokens stays vanilla)."""
    import mindspore as ms
    from mindspore import ops

    from pangu_cli.models import unet as unet_module

    context = x if context is None else context
    q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
    head_dim = q.shape[-1] // self.heads
    if (q.shape[1] % 16 == 0 and k.shape[1] % 16 == 0 and head_dim <= 256 and head_dim % 16 == 0
            and q.dtype in (ms.float16, ms.bfloat16)):
        out = ops.flash_attention_score(q, k, v, self.heads, scalar_value=self.scale, input_layout="BSH")
    else:
        out = unet_module.attention(q, k, v, self.heads, self.scale)
    return self.to_out(out)


def use_flash_attention(unet) -> int:
    """Route the UNet's attention through `ops.flash_attention_score` (Ascend); returns the layers switched."""
    from pangu_cli.models.unet import CrossAttention

    count = 0
    for _, cell in unet.cells_and_names():
        if isinstance(cell, CrossAttention):
            cell.construct = types.MethodType(_flash_cross_attention, cell)
            count += 1
    return count


@dataclass
class DeviceOptions:
    device: str = "CPU"
    half: object = None  # mindspore dtype for weights and compute, None for fp32
    jit: bool = False
    flash_attention: bool = False
    offload_cache: str = "disk"  # where offloaded UNet weights wait: "host" (RAM) or "disk" (the file)


def device_options(precision: str, device: str | None = None) -> DeviceOptions:
    from pangu_cli import runtime

    info = runtime.current()
    device = device or (info.device if info else "CPU")
    precision = runtime.resolve_precision(precision, device)
    if precision == "bf16" and device == "CPU":
        raise DeviceError("MindSpore 2.10 has no bfloat16 CPU kernels for embedding lookups (Gather) and other ops",
                          "use --precision fp32 (or fp16) on CPU; bf16 is for Ascend and recent GPUs")
    accel = runtime.accelerator_options(device)
    half = None if precision == "fp32" else runtime.compute_dtype(precision)
    return DeviceOptions(device, half, accel["jit"], accel["flash_attention"] and half is not None,
                         accel["offload_cache"])


def _prepare_unet(unet, opts: DeviceOptions):
    if opts.half is not None:
        mixed_precision(unet, opts.half)
    if opts.flash_attention:
        use_flash_attention(unet)
    if opts.jit:
        unet.enable_jit()
    unet.set_train(False)
    return unet


# ---------------------------------------------------------------------------------------------------------------
# UNet experts: resident, lazy, or offloaded


class UNetBank:
    """The UNets of a model by role. Each is read from its checkpoint at load (eager) or at its first call (lazy).
    With `offload` there is one Cell: calling an expert whose weights are not in it swaps them in, from the host
    copy kept at the first read (`cache="host"`) or from the file again (`cache="disk"`)."""

    def __init__(self, spec: ModelSpec, refs: dict[str, dict[str, TensorRef]], labels: dict[str, str],
                 opts: DeviceOptions, offload: bool, unets: dict[str, UNetModel]):
        self.spec, self.refs, self.labels, self.opts, self.offload = spec, refs, labels, opts, offload
        self.roles = [role for role in ROLES if role in refs]
        self.unets = unets  # shared with LoadedModel.unets: the Cells holding weights now, by role
        self.resident: str | None = None  # offload: whose weights the shared Cell holds
        self.reads: list[str] = []  # roles in the order their weights were put into a Cell
        self.seconds = 0.0  # time spent reading / swapping weights
        self._cells: dict[str, tuple] = {}  # role (or "shared") → (UNet, ParamTable)
        self._host: dict[str, dict[str, np.ndarray]] = {}
        self.spare: UNetModel | None = None  # an empty UNet already built (for the key check), used first

    def expert(self, role: str) -> Callable:
        def call(*args, **kwargs):
            return self.get(role)(*args, **kwargs)

        return call

    def get(self, role: str):
        """The UNet Cell for `role`, with its weights in place."""
        if role not in self.refs:
            raise ModelError(f"model '{self.spec.name}' has no {role} UNet")
        slot = "shared" if self.offload else role
        if slot not in self._cells:
            unet, self.spare = self.spare or _built(self.spec, build_unet, self.opts.half), None
            table = ParamTable(unet, self.opts.half)
            self._cells[slot] = (_prepare_unet(unet, self.opts), table)
        unet, table = self._cells[slot]
        if (self.resident != role) if self.offload else (role not in self.unets):
            self._fill(role, table)
            if self.offload:
                self.unets.clear()
                self.resident = role
            self.unets[role] = unet
        return unet

    def _fill(self, role: str, table: ParamTable) -> None:
        start = time.perf_counter()
        check_keys(table.shapes(), self.refs[role], self.labels[role])
        if role in self._host:
            table.fill(self._host[role].items())
        else:
            keep = {} if self.offload and self.opts.offload_cache == "host" else None
            table.fill(read_tensors(self.refs[role]), keep=keep)
            if keep is not None:
                self._host[role] = keep
        self.reads.append(role)
        self.seconds += time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------------
# Loading


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def load_model(spec: ModelSpec, precision: str = "fp32", offload: bool | None = None,
               lazy_texture: bool | None = None, device: str | None = None) -> LoadedModel:
    """Build the networks of `spec` and fill them from its checkpoints (MindSpore must be set up).

    precision: fp32, fp16, bf16 or auto (fp16 on Ascend/GPU, fp32 on CPU). offload: one UNet Cell, weights
    swapped at the switch (default: the PANGU_OFFLOAD environment variable). lazy_texture: read the texture UNet
    at its first step (default: with offload). Every key and shape is checked before any weight is read.
    """
    missing = spec.missing_files()
    if missing:
        raise ModelError(f"model '{spec.name}' is missing {missing[0]}",
                         "copy the file back, or run `pangu models` to see what is installed")
    start = time.perf_counter()
    if spec.checkpoint("texture") is None:
        raise ModelError(f"model '{spec.name}' names no texture checkpoint", "add checkpoints.texture to model.json")
    offload = _env_flag(OFFLOAD_ENV) if offload is None else offload
    lazy_texture = offload if lazy_texture is None else lazy_texture
    opts = device_options(precision, device)

    texture = checkpoint_parts(spec, "texture")
    notes = list(texture.notes)
    unet_refs = {"texture": texture.parts[UNET_PREFIX]}
    labels = {"texture": f"texture UNet ({texture.label(UNET_PREFIX)})"}
    if spec.checkpoint("structure") is not None:
        structure = checkpoint_parts(spec, "structure")
        notes += structure.notes
        unet_refs["structure"] = structure.parts[UNET_PREFIX]
        labels["structure"] = f"structure UNet ({structure.label(UNET_PREFIX)})"
    if not spec.manifest.get("vae") and texture.parts[VAE_PREFIX]:
        raise _stray_error(spec.checkpoint("texture"), list(texture.parts[VAE_PREFIX]),
                           (UNET_PREFIX, CONDITIONER_PREFIX))

    unets: dict[str, UNetModel] = {}
    bank = UNetBank(spec, unet_refs, labels, opts, offload, unets)
    # Fail on any key or shape mismatch before reading gigabytes: check every UNet group up front.
    bank.spare = _built(spec, build_unet, opts.half)
    shapes = _shapes(bank.spare)
    for role in bank.roles:
        check_keys(shapes, unet_refs[role], labels[role])

    conditioner = _built(spec, build_conditioner, opts.half)
    load_checked(conditioner, texture.parts[CONDITIONER_PREFIX], f"text encoders ({texture.label(CONDITIONER_PREFIX)})",
                 opts.half)
    vae = _built(spec, build_vae)
    if vae is not None:
        load_checked(vae, texture.parts[VAE_PREFIX], f"autoencoder ({texture.label(VAE_PREFIX)})")
        vae.set_train(False)
    conditioner.load_tokenizers(spec.path)
    conditioner.set_train(False)
    if opts.half is not None:
        for embedder in conditioner.embedders:
            mixed_precision(embedder.tower, opts.half)

    eager = [role for role in bank.roles if not (lazy_texture and role == "texture")]
    for role in eager:
        bank.get(role)
    model = LoadedModel(spec, conditioner, unets, vae, notes=notes,
                        bank=bank if (offload or lazy_texture) else None)
    model.timings["load"] = time.perf_counter() - start
    return model


def expected_keys(spec: ModelSpec) -> dict[str, dict[str, tuple]]:
    """Key → shape of each checkpoint group (full reference names), from the config, allocating no weights."""
    unet = {UNET_PREFIX + k: v for k, v in _shapes(_built(spec, build_unet)).items()}
    texture = dict(unet)
    texture.update({CONDITIONER_PREFIX + k: v for k, v in _shapes(_built(spec, build_conditioner)).items()})
    vae = _built(spec, build_vae)
    if vae is not None:
        texture.update({VAE_PREFIX + k: v for k, v in _shapes(vae).items()})
    shapes = {"texture": texture}
    if spec.checkpoint("structure") is not None:
        shapes["structure"] = unet
    return shapes


def verify_checkpoint(spec: ModelSpec, group: str) -> list[str]:
    """Check a checkpoint group's key set and shapes against the config without reading weights.

    Raises CheckpointError naming the first missing / unexpected / mis-shaped keys; returns notes.
    """
    found = checkpoint_parts(spec, group)
    builders = {UNET_PREFIX: ("UNet", build_unet), CONDITIONER_PREFIX: ("text encoders", build_conditioner),
                VAE_PREFIX: ("autoencoder", build_vae)}
    prefixes = (UNET_PREFIX,) if group == "structure" else (UNET_PREFIX, CONDITIONER_PREFIX, VAE_PREFIX)
    for prefix in prefixes:
        name, builder = builders[prefix]
        cell = _built(spec, builder)
        if cell is None:
            if found.parts[prefix]:
                raise _stray_error(spec.checkpoint(group), list(found.parts[prefix]), (UNET_PREFIX, CONDITIONER_PREFIX))
            continue
        what = f"{group} {name}" if prefix == UNET_PREFIX else name
        check_keys(_shapes(cell), found.parts[prefix], f"{what} ({found.label(prefix)})")
    return found.notes

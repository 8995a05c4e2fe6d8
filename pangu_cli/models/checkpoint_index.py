"""Where each tensor of a checkpoint lies in its file, read on demand.

Checkpoints (MindSpore `.ckpt` protobuf or `.safetensors`) are indexed from their headers only, then read one
tensor at a time, so loading needs the networks plus one tensor, not the networks plus whole files.
"""

from __future__ import annotations

import json
import os
import struct
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from pangu_cli.errors import ModelError


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

"""Bit-packed integer weights: the compact state-dict export of a compressed model.

Bit order (little-endian, LSB first). A layer's integer weights are flattened in C order
(``weight.reshape(-1)``) and each value is written as a ``b``-bit two's-complement field: value
``i`` occupies bits ``i*b .. i*b + b - 1`` of one long bit stream, its least significant bit
first, and bit ``k`` of the stream is bit ``k % 8`` (``1 << (k % 8)``) of byte ``k // 8``. So
``n`` values take exactly ``ceil(n * b / 8)`` bytes; the unused high bits of the last byte are
zero. Example, ``b = 3``, values ``[1, -1, 2]`` -> fields ``001``, ``111``, ``010`` -> stream
(LSB first) ``100 111 010`` -> bytes ``0b10111001, 0b00000000`` = ``[0xB9, 0x00]``.

A quantized Conv/Linear weight is stored as these packed integers plus one float32 scale per
output channel (symmetric per-channel quantization, zero point 0, integers in
``[-(2^(b-1) - 1), 2^(b-1) - 1]``), exactly the grid of
:func:`autocompress.compression.quantization.quantize_weight`: ``integers * scale`` reproduces
the fake-quant weight bit for bit.

A weight with a non-uniform quantizer (``pot``, ``apot``, ``codebook``; see
:mod:`autocompress.compression.quantization`) is stored as ``b``-bit indices into its level
table, packed the same way as ``index - 2^(b-1)`` (so the fields stay two's complement), plus
the table itself (float32, at most ``2^b`` values: the normalised levels of pot/apot, the
codebook's values) and, for pot/apot, the float32 per-channel scales: ``table[index] * scale``
(``table[index]`` for a codebook) reproduces the fake-quant weight bit for bit.

A whole model is written by :func:`write_packed` as two files: ``weights.bin`` (every tensor's
bytes back to back, no padding, little-endian) and ``weights.json`` (the index: for each
state_dict key its ``offset``/``nbytes`` in the blob, shape and either ``"encoding": "raw"`` with a
dtype or ``"encoding": "packed"`` with ``bits`` and the offset of its float32 scales; a
non-uniform weight adds ``quantizer`` and the offset of its table, ``levels_offset``, and a
codebook has no scales). Nothing is pickled; :func:`read_packed` rebuilds the state_dict.

Sparse layers (a ``weight_mask`` beside the weight, see ``compression.sparsity``) store their mask
as ``"encoding": "bitmask"`` (one bit per weight, C order, LSB first) and their weight as
``"encoding": "packed_sparse"``: the same packed integers and scales, but only those of the kept
weights (the mask's ``True`` entries, in C order), with ``"mask"`` naming the mask's key; the
masked weights read back as exact zeros.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..compression.quantization import (
    FLOAT_BITS,
    MIN_BITS,
    UNIFORM,
    decode_weight,
    lsq_grid,
    weight_code,
)

MAX_PACKED_BITS = 16  # wider weights are stored raw (float32), as the fake-quant keeps them
PACKED_FILE = "weights.bin"
PACKED_INDEX = "weights.json"
PACKED_FORMAT = "autocompress-packed"
PACKED_VERSION = 1
# Raw tensors in the blob: the dtypes a state_dict of these models holds, by stable names.
_RAW_DTYPES = {
    torch.float32: "float32",
    torch.float64: "float64",
    torch.float16: "float16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.bool: "bool",
}
_NUMPY_DTYPES = {"float32": "<f4", "float64": "<f8", "float16": "<f2", "int64": "<i8"}
_NUMPY_DTYPES |= {"int32": "<i4", "bool": "|b1"}


def _check_bits(bits: Any, *, where: str) -> int:
    # bool is an int subclass; True/False as a bit-width is always a caller bug.
    if (
        isinstance(bits, bool)
        or not isinstance(bits, Integral)
        or not MIN_BITS <= bits <= MAX_PACKED_BITS
    ):
        raise ValueError(
            f"The 'bits' parameter of {where} must be an int in [{MIN_BITS}, {MAX_PACKED_BITS}]. "
            f"Got {bits!r} instead."
        )
    return int(bits)


def pack_bits(values: Tensor, *, bits: int) -> Tensor:
    """Pack signed integers of ``bits`` bits into a 1-D uint8 tensor (see the module doc).

    ``values`` is any integer tensor whose entries lie in ``[-2^(bits-1), 2^(bits-1) - 1]``;
    it is flattened in C order. The result has ``ceil(values.numel() * bits / 8)`` bytes.
    """
    bits = _check_bits(bits, where="pack_bits")
    if not isinstance(values, Tensor) or values.is_floating_point() or values.is_complex():
        got = values.dtype if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(
            f"The 'values' parameter of pack_bits must be an integer tensor. Got {got} instead."
        )
    flat = values.detach().cpu().reshape(-1).to(torch.int64).numpy()
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    if flat.size and (flat.min() < lo or flat.max() > hi):
        raise ValueError(
            f"The 'values' parameter of pack_bits must lie in [{lo}, {hi}] for bits={bits}. "
            f"Got values in [{flat.min()}, {flat.max()}] instead."
        )
    # Two's complement in b bits, then one row of b bits per value, LSB first.
    unsigned = flat & ((1 << bits) - 1)
    stream = ((unsigned[:, None] >> np.arange(bits)) & 1).astype(np.uint8).reshape(-1)
    return torch.from_numpy(np.packbits(stream, bitorder="little"))


def unpack_bits(packed: Tensor, *, bits: int, count: int) -> Tensor:
    """Inverse of :func:`pack_bits`: the first ``count`` values, as a 1-D int32 tensor."""
    bits = _check_bits(bits, where="unpack_bits")
    if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
        raise ValueError(
            f"The 'count' parameter of unpack_bits must be a non-negative int. Got {count!r} "
            "instead."
        )
    if not isinstance(packed, Tensor) or packed.dtype != torch.uint8:
        got = packed.dtype if isinstance(packed, Tensor) else type(packed).__name__
        raise ValueError(
            f"The 'packed' parameter of unpack_bits must be a uint8 tensor. Got {got} instead."
        )
    needed = math.ceil(count * bits / 8)
    if packed.numel() < needed:
        raise ValueError(
            f"The 'packed' parameter of unpack_bits must hold at least ceil({count} * {bits} / 8)"
            f" = {needed} bytes. Got {packed.numel()} bytes instead."
        )
    stream = np.unpackbits(packed.cpu().reshape(-1).numpy(), bitorder="little")
    fields = stream[: count * bits].reshape(count, bits).astype(np.int64)
    unsigned = (fields << np.arange(bits)).sum(axis=1)
    signed = np.where(unsigned >= 2 ** (bits - 1), unsigned - 2**bits, unsigned)
    return torch.from_numpy(signed.astype(np.int32))


def integer_weight(weight: Tensor, *, bits: int) -> tuple[Tensor, Tensor]:
    """``(integers, scale)`` of the symmetric per-output-channel grid of ``quantize_weight``.

    ``integers`` (int32, same shape as ``weight``) lie in ``[-(2^(bits-1) - 1), 2^(bits-1) - 1]``;
    ``scale`` is float32 ``[out_channels]``. ``integers * scale.view(-1, 1, ...)`` equals
    ``quantize_weight(weight, bits)`` exactly: the same float32 operations, in the same order.
    """
    if isinstance(bits, bool) or not isinstance(bits, Integral) or not MIN_BITS <= bits < 32:
        raise ValueError(
            f"The 'bits' parameter of integer_weight must be an int in [{MIN_BITS}, 31]. "
            f"Got {bits!r} instead."
        )
    w = weight.detach()
    qmax = 2 ** (bits - 1) - 1
    max_abs = w.abs().flatten(1).amax(dim=1)
    scale = torch.where(max_abs > 0, max_abs / qmax, torch.ones_like(max_abs))
    view = scale.view(-1, *([1] * (w.dim() - 1)))
    integers = torch.clamp(torch.round(w / view), -qmax, qmax)
    return integers.to(torch.int32), scale.to(torch.float32)


def dequantize(integers: Tensor, scale: Tensor) -> Tensor:
    """``integers * scale`` with the scale broadcast along dim 0 (the output channels)."""
    view = scale.view(-1, *([1] * (integers.dim() - 1)))
    return integers.to(view.dtype) * view


@dataclass(frozen=True)
class PackedWeight:
    """One layer's weight: ``bits``-bit integers packed into ``data`` and per-channel scales;
    for a non-uniform ``quantizer`` the integers are indices into ``levels`` (see the module
    doc), and a codebook has no scales."""

    bits: int
    shape: tuple[int, ...]
    data: Tensor  # uint8, ceil(prod(shape) * bits / 8) bytes
    scale: Tensor | None  # float32 [shape[0]]; None for a codebook
    quantizer: str = UNIFORM
    levels: Tensor | None = None  # float32 level table of a non-uniform quantizer

    @classmethod
    def from_weight(cls, weight: Tensor, *, bits: int) -> PackedWeight:
        bits = _check_bits(bits, where="PackedWeight.from_weight")
        integers, scale = integer_weight(weight, bits=bits)
        return cls(bits, tuple(weight.shape), pack_bits(integers, bits=bits), scale)

    @classmethod
    def from_layer(cls, module: nn.Module) -> PackedWeight:
        """The packed weight of fake-quant layer ``module``, with its own quantizer."""
        bits, quantizer = module.w_bits, getattr(module, "w_quantizer", UNIFORM)
        weight = module.masked_weight() if hasattr(module, "masked_weight") else module.weight
        step = getattr(module, "w_step", None)
        if quantizer == UNIFORM and step is not None:  # a learned (LSQ) step is the scale
            bits = _check_bits(bits, where="PackedWeight.from_layer")
            integers, scale = lsq_grid(weight, bits, step)
            return cls(bits, tuple(weight.shape), pack_bits(integers, bits=bits), scale.cpu())
        if quantizer == UNIFORM:
            return cls.from_weight(weight, bits=bits)
        bits = _check_bits(bits, where="PackedWeight.from_layer")
        codebook = getattr(module, "codebook", None)
        indices, table, scale = weight_code(weight, bits, quantizer, codebook)
        fields = pack_bits(indices.cpu() - 2 ** (bits - 1), bits=bits)
        scale = None if scale is None else scale.detach().cpu().float()
        levels = table.detach().cpu().float()
        return cls(bits, tuple(weight.shape), fields, scale, quantizer, levels)

    def integers(self) -> Tensor:
        """The stored integers: uniform weights' grid points, or non-uniform weights' indices
        into ``levels`` (see :meth:`indices`) minus ``2^(bits-1)``."""
        return unpack_bits(self.data, bits=self.bits, count=math.prod(self.shape)).reshape(
            self.shape
        )

    def indices(self) -> Tensor:
        """A non-uniform weight's indices into ``levels``, ``0 .. len(levels) - 1``."""
        return self.integers() + 2 ** (self.bits - 1)

    def dequantized(self) -> Tensor:
        if self.quantizer == UNIFORM:
            return dequantize(self.integers(), self.scale)
        return decode_weight(self.indices(), self.levels, self.scale)


def packed_weights(model: nn.Module) -> dict[str, PackedWeight]:
    """``{state_dict key: PackedWeight}`` of every fake-quant layer with 2..16-bit weights.

    Layers with quantization disabled or with float (32-bit) or 17..31-bit weights are left
    out: they are stored raw.
    """
    packed = {}
    for name, module in model.named_modules():
        bits = getattr(module, "w_bits", FLOAT_BITS)
        if not getattr(module, "quant_enabled", False) or not MIN_BITS <= bits <= MAX_PACKED_BITS:
            continue
        key = f"{name}.weight" if name else "weight"
        packed[key] = PackedWeight.from_layer(module)
    return packed


def write_packed(directory: Path, model: nn.Module) -> Path:
    """Write ``model``'s state_dict as ``weights.bin`` + ``weights.json``; returns the .bin path.

    Quantized weights are bit-packed (see the module doc); every other tensor is stored raw,
    little-endian, in its own dtype.
    """
    directory.mkdir(parents=True, exist_ok=True)
    packed = packed_weights(model)
    chunks: list[bytes] = []
    index: dict[str, dict[str, Any]] = {}
    offset = 0

    def add(data: bytes) -> int:
        nonlocal offset
        chunks.append(data)
        start, offset = offset, offset + len(data)
        return start

    state = model.state_dict()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        mask_key = key.removesuffix("weight") + "weight_mask"
        # Non-uniform layers keep their dense indices: a masked weight is index of level 0.
        if key in packed and mask_key in state and packed[key].quantizer == UNIFORM:
            p, mask = packed[key], state[mask_key].cpu().reshape(-1)
            kept = pack_bits(p.integers().reshape(-1)[mask], bits=p.bits)
            data = kept.numpy().tobytes()
            entry = {"encoding": "packed_sparse", "bits": p.bits, "shape": list(p.shape)}
            entry |= {"mask": mask_key, "offset": add(data), "nbytes": len(data)}
            scale = p.scale.numpy().astype("<f4").tobytes()
            entry |= {"scale_offset": add(scale), "scale_nbytes": len(scale)}
        elif key.endswith("weight_mask") and tensor.dtype == torch.bool:
            data = np.packbits(tensor.reshape(-1).numpy(), bitorder="little").tobytes()
            entry = {"encoding": "bitmask", "shape": list(tensor.shape)}
            entry |= {"offset": add(data), "nbytes": len(data)}
        elif key in packed:
            p = packed[key]
            data = p.data.numpy().tobytes()
            entry = {"encoding": "packed", "bits": p.bits, "shape": list(p.shape)}
            entry |= {"offset": add(data), "nbytes": len(data)}
            if p.scale is not None:
                scale = p.scale.numpy().astype("<f4").tobytes()
                entry |= {"scale_offset": add(scale), "scale_nbytes": len(scale)}
            if p.quantizer != UNIFORM:
                levels = p.levels.numpy().astype("<f4").tobytes()
                entry |= {"quantizer": p.quantizer}
                entry |= {"levels_offset": add(levels), "levels_nbytes": len(levels)}
        else:
            if tensor.dtype not in _RAW_DTYPES:
                raise ValueError(
                    f"The state_dict entry {key!r} has dtype {tensor.dtype}, which the packed "
                    f"format does not store (supported: {sorted(_RAW_DTYPES.values())})."
                )
            dtype = _RAW_DTYPES[tensor.dtype]
            data = tensor.contiguous().numpy().astype(_NUMPY_DTYPES[dtype]).tobytes()
            entry = {"encoding": "raw", "dtype": dtype, "shape": list(tensor.shape)}
            entry |= {"offset": add(data), "nbytes": len(data)}
        index[key] = entry
    blob = directory / PACKED_FILE
    blob.write_bytes(b"".join(chunks))
    header = {"format": PACKED_FORMAT, "version": PACKED_VERSION, "byte_order": "little"}
    (directory / PACKED_INDEX).write_text(json.dumps({**header, "tensors": index}, indent=1))
    return blob


def read_packed(directory: Path) -> dict[str, Tensor]:
    """The state_dict stored by :func:`write_packed`; packed weights come back dequantized."""
    index_path, blob_path = directory / PACKED_INDEX, directory / PACKED_FILE
    for path in (index_path, blob_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"No packed weights in {str(directory)!r}: {path.name} is missing."
            )
    index = json.loads(index_path.read_text())
    if index.get("format") != PACKED_FORMAT or index.get("version") != PACKED_VERSION:
        raise ValueError(
            f"The 'format'/'version' fields of {str(index_path)!r} must be {PACKED_FORMAT!r} / "
            f"{PACKED_VERSION}. Got {index.get('format')!r} / {index.get('version')!r} instead."
        )
    blob = blob_path.read_bytes()
    state = {}
    tensors = index["tensors"]

    def bitmask(entry: Mapping[str, Any]) -> Tensor:
        data = blob[entry["offset"] : entry["offset"] + entry["nbytes"]]
        count = math.prod(entry["shape"])
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")[:count]
        return torch.from_numpy(bits.astype(bool)).reshape(tuple(entry["shape"]))

    for key, entry in tensors.items():
        data = blob[entry["offset"] : entry["offset"] + entry["nbytes"]]
        shape = tuple(entry["shape"])
        if entry["encoding"] == "bitmask":
            state[key] = bitmask(entry)
        elif entry["encoding"] == "packed_sparse":
            mask = bitmask(tensors[entry["mask"]]).reshape(-1)
            start = entry["scale_offset"]
            scale = np.frombuffer(blob[start : start + entry["scale_nbytes"]], dtype="<f4")
            kept = unpack_bits(
                torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()),
                bits=entry["bits"],
                count=int(mask.sum()),
            )
            integers = torch.zeros(math.prod(shape), dtype=torch.int32)
            integers[mask] = kept
            state[key] = dequantize(integers.reshape(shape), torch.from_numpy(scale.copy()))
        elif entry["encoding"] == "packed":
            weight = PackedWeight(
                bits=entry["bits"],
                shape=shape,
                data=torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy()),
                scale=_floats(blob, entry, "scale"),
                quantizer=entry.get("quantizer", UNIFORM),
                levels=_floats(blob, entry, "levels"),
            )
            state[key] = weight.dequantized()
        else:
            array = np.frombuffer(data, dtype=_NUMPY_DTYPES[entry["dtype"]]).reshape(shape)
            state[key] = torch.from_numpy(array.copy())
    return state


def _floats(blob: bytes, entry: Mapping[str, Any], name: str) -> Tensor | None:
    """The float32 array ``name`` (``scale`` or ``levels``) of an index entry, if it has one."""
    if f"{name}_offset" not in entry:
        return None
    start = entry[f"{name}_offset"]
    values = np.frombuffer(blob[start : start + entry[f"{name}_nbytes"]], dtype="<f4")
    return torch.from_numpy(values.copy())


def packed_state_equal(model: nn.Module, state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` (from :func:`read_packed`) holds ``model``'s fake-quant weights exactly
    and every other tensor bit for bit."""
    packed = packed_weights(model)
    for key, tensor in model.state_dict().items():
        expected = packed[key].dequantized() if key in packed else tensor.detach().cpu()
        if key not in state or not torch.equal(state[key], expected):
            return False
    return set(state) == set(model.state_dict())


__all__ = [
    "PACKED_FILE",
    "PACKED_INDEX",
    "PackedWeight",
    "dequantize",
    "integer_weight",
    "pack_bits",
    "packed_state_equal",
    "packed_weights",
    "read_packed",
    "unpack_bits",
    "write_packed",
]

"""The compressed file: a checked header, the coded segments and a checksum.

    MAGIC (8 bytes) | header length (uint32, little-endian) | header (UTF-8 JSON)
    | segment 0 | segment 1 | ... | SHA-256 of every byte before it (32 bytes)

The header names what decoding needs and what the file holds: the format and codec versions,
the codec's own parameters, the model's family and hash (`model_sha256`: SHA-256 over the state
dict's tensors in name order, so a results cell and the weights file exported from it agree),
the image shape, count and names, the batch size, each segment's length in bytes, and the
machine the probabilities were computed on (torch and constriction versions, CPU model and
instruction-set flags, threads). Decoding on another CPU kind or library version is not
promised (float results of the network may differ in the last bits, and the coder would then
decode garbage), so a file from another one is refused, as are a wrong model, a truncated file
and a corrupted one: each with one line (`UserError`), never garbage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import platform
import struct
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from harness.errors import UserError

MAGIC = b"HLOSSLS\x00"
FORMAT_VERSION = 1
_LENGTH = struct.Struct("<I")
_CHECKSUM_BYTES = 32
# Instruction sets whose presence changes which kernels oneDNN and MKL run, hence float results.
_ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8")


def model_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the state dict's tensors in sorted name order (name, dtype, shape, bytes)."""
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, the instruction-set flags of `_ISA_FLAGS` it has)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            name = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            break
    return name, tuple(flag for flag in _ISA_FLAGS if flag in flags)


def environment() -> dict[str, Any]:
    """What the coded probabilities depend on besides the model and the batch composition."""
    cpu, isa = _cpu()
    return {"torch": torch.__version__, "constriction": metadata.version("constriction"),
            "cpu": cpu, "isa": list(isa), "threads": 1}


def pack(header: dict[str, Any], segments: list[bytes]) -> bytes:
    """The file's bytes; `header` gets the format version and the segment lengths."""
    header = {"format": FORMAT_VERSION, **header, "segment_bytes": [len(s) for s in segments]}
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    body = b"".join([MAGIC, _LENGTH.pack(len(text)), text, *segments])
    return body + hashlib.sha256(body).digest()


def unpack(data: bytes, source: str) -> tuple[dict[str, Any], list[bytes]]:
    """(header, segments) of a file's bytes; `UserError` naming `source` when it is not a
    complete, intact file of this format."""
    def refuse(why: str) -> UserError:
        return UserError(f"{source}: {why}; it cannot be decoded")

    if not data.startswith(MAGIC):
        if MAGIC.startswith(data):
            raise refuse(f"truncated ({len(data)} bytes)")
        raise refuse("not a file written by harness compress (wrong magic bytes)")
    start = len(MAGIC) + _LENGTH.size
    if len(data) < start:
        raise refuse(f"truncated ({len(data)} bytes)")
    (length,) = _LENGTH.unpack_from(data, len(MAGIC))
    if start + length + _CHECKSUM_BYTES > len(data):
        raise refuse(f"truncated or corrupted: its header claims {length} bytes, the file has "
                     f"{len(data)} in all")
    try:
        header = json.loads(data[start:start + length].decode("utf-8"))
        sizes = [int(size) for size in header["segment_bytes"]]
        assert isinstance(header, dict) and all(size >= 0 for size in sizes)
    except (ValueError, KeyError, TypeError, AssertionError):
        raise refuse("corrupted (its header is unreadable)") from None
    expected = start + length + sum(sizes) + _CHECKSUM_BYTES
    if len(data) < expected:
        raise refuse(f"truncated: {len(data)} of {expected} bytes")
    if len(data) > expected:
        raise refuse(f"corrupted: {len(data) - expected} bytes more than its header describes")
    if hashlib.sha256(data[:-_CHECKSUM_BYTES]).digest() != data[-_CHECKSUM_BYTES:]:
        raise refuse("corrupted: its SHA-256 checksum does not match")
    if header.get("format") != FORMAT_VERSION:
        raise refuse(f"format version {header.get('format')}, this harness reads "
                     f"{FORMAT_VERSION}")
    segments, offset = [], start + length
    for size in sizes:
        segments.append(data[offset:offset + size])
        offset += size
    return header, segments


def check_decodable(header: dict[str, Any], model_hash: str, source: str,
                    model_name: str) -> None:
    """Refuse (one line) a file made with another model, or on another machine kind."""
    if header.get("model_sha256") != model_hash:
        raise UserError(f"{source} was compressed with model sha256 "
                        f"{str(header.get('model_sha256'))[:12]}…, but {model_name} has "
                        f"{model_hash[:12]}…; decompress it with the model it was made with")
    made, here = header.get("environment", {}), environment()
    for key in ("torch", "constriction", "cpu", "isa", "threads"):
        if made.get(key) != here[key]:
            raise UserError(f"{source} was compressed with {key} {made.get(key)!r}, this "
                            f"machine has {here[key]!r}; decoding is only exact with the same "
                            f"{key}: decompress it where it was made")

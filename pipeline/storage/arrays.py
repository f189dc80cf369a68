"""Array files read through the I/O boundary, memory bounded by what they declare, not by luck.

An .npz is opened (a regular file only) and only the arrays asked for are read; each one's .npy header is read
first and its declared size (shape × item size) checked against the caller's budget and against the bytes the
archive really holds, before anything is allocated. A safetensors file's header is read (its length bounded)
and every tensor's declared shape and offsets checked against its dtype and the file's size before a loader
maps it. Written here rather than np.load, because np.load allocates whatever a header claims (a 3.6 TiB claim
is a MemoryError) and an npz's arrays are usually all read; numpy's own header parser is used.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from deployc.errors import UsageError
from deployc.storage.files import open_regular, size_text

MAX_SAFETENSORS_HEADER = 100 << 20  # safetensors' own limit
_SAFETENSORS_ITEM = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2}
_SAFETENSORS_ITEM |= {"BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}


class Npz:
    """An open .npz archive; `array(name, budget)` reads one member after checking its header."""

    def __init__(self, path: Path, key: str):
        self.path, self.key = path, key
        fd = open_regular(path, key, ".npz file")
        self._file = os.fdopen(fd, "rb")
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            self._file.close()
            raise UsageError(f"{key}: '{path}' is not a readable .npz file ({exc})") from None
        self.members = {n.removesuffix(".npy"): n for n in self._zip.namelist() if n.endswith(".npy")}

    @property
    def files(self) -> list[str]:
        return sorted(self.members)

    def __enter__(self) -> Npz:
        return self

    def __exit__(self, *exc: object) -> None:
        self._zip.close()
        self._file.close()

    def array(self, name: str, budget: int) -> np.ndarray:
        """Member `name`, read only after its declared size is checked against `budget` and the archive."""
        where = f"{self.key}: '{self.path}' array '{name}'"
        info = self._zip.getinfo(self.members[name])
        try:
            with self._zip.open(info) as f:
                version = np.lib.format.read_magic(f)
                readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                if version not in readers:
                    raise ValueError(f"npy format version {version} is not one numpy writes for plain arrays")
                shape, fortran, dtype = readers[version](f)
                header_bytes = f.tell()
                if dtype.hasobject:
                    raise UsageError(f"{where}: Object arrays cannot be loaded (they hold pickles, which can run code)")
                declared = math.prod(shape) * dtype.itemsize
                shown = f"{list(shape)} {dtype}"
                if declared > budget:
                    raise UsageError(
                        f"{where} declares {shown} = {size_text(declared)}; a data source over {size_text(budget)} "
                        "is refused (checked before reading)"
                    )
                if declared > info.file_size - header_bytes:
                    raise UsageError(
                        f"{where} declares {shown} = {size_text(declared)} but holds "
                        f"{size_text(max(0, info.file_size - header_bytes))}; the file is damaged"
                    )
                return _read_body(f, shape, fortran, dtype)
        except UsageError:
            raise
        except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
            raise UsageError(f"{self.key}: '{self.path}' is not a readable .npz file ({exc})") from None


def _read_body(f: Any, shape: tuple[int, ...], fortran: bool, dtype: np.dtype) -> np.ndarray:
    """The array bytes after the header, read into one buffer of the (checked) declared size."""
    count = math.prod(shape)
    buffer = bytearray(count * dtype.itemsize)
    view, done = memoryview(buffer), 0
    while done < len(buffer):
        n = f.readinto(view[done:])
        if not n:
            raise ValueError(f"array data ends after {done} of {len(buffer)} bytes")
        done += n
    array = np.frombuffer(buffer, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).transpose() if fortran else array.reshape(shape)


def check_safetensors(path: Path, key: str) -> None:
    """Refuse a safetensors file whose header is too long, is not JSON, or declares a tensor whose shape and dtype
    disagree with its byte range, or whose bytes lie beyond the file: checked before any loader maps it."""
    fd = open_regular(path, key, "safetensors file")
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, 8, 0)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if length < 0:
            raise UsageError(f"{key}: '{path}' is not a readable safetensors file ({size} bytes: no header length)")
        if length > MAX_SAFETENSORS_HEADER or 8 + length > size:
            raise UsageError(
                f"{key}: '{path}' is not a readable safetensors file (it declares a {size_text(length)} header "
                f"in a {size_text(size)} file)"
            )
        raw = b""
        while len(raw) < length:
            chunk = os.pread(fd, length - len(raw), 8 + len(raw))
            if not chunk:
                break
            raw += chunk
    finally:
        os.close(fd)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UsageError(
            f"{key}: '{path}' is not a readable safetensors file (its header is not JSON: {exc})"
        ) from None
    if not isinstance(header, dict):
        raise UsageError(f"{key}: '{path}' is not a readable safetensors file (its header is not a mapping)")
    data_bytes = size - 8 - length
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_tensor_entry(path, key, name, entry, data_bytes)


def _check_tensor_entry(path: Path, key: str, name: str, entry: Any, data_bytes: int) -> None:
    where = f"{key}: '{path}' tensor '{name}'"
    try:
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        ok = all(isinstance(d, int) and d >= 0 for d in [*shape, begin, end]) and dtype in _SAFETENSORS_ITEM
    except (TypeError, KeyError, ValueError):
        ok = False
    if not ok:
        raise UsageError(f"{where}: its header entry is not {{dtype, shape, data_offsets}} of known values")
    declared = math.prod(shape) * _SAFETENSORS_ITEM[dtype]
    if end < begin or end - begin != declared or end > data_bytes:
        raise UsageError(
            f"{where} declares {shape} {dtype} = {size_text(declared)} at bytes {begin}..{end} of "
            f"{size_text(data_bytes)}; the file is damaged or not what it claims"
        )

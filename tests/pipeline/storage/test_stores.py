"""Owned folders: the out dir's marker read as untrusted data, the cache's proof of ownership, arrays read by
declaration (storage/outdir.py, cache_store.py, arrays.py)."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from deployc.errors import UsageError
from deployc.storage.arrays import Npz, check_safetensors
from deployc.storage.cache_store import CACHE_MARKER, CacheStore
from deployc.storage.outdir import MARKER_NAME, read_marker


@pytest.mark.parametrize(
    ("marker", "bad"),
    [
        ({"files": ["onnx/m.onnx", "../victim.txt"]}, "../victim.txt"),
        ({"files": ["/etc/passwd"]}, "/etc/passwd"),
        ({"files": [], "staging": ["../photos"]}, "../photos"),
        ({"files": [], "staging": ["onnx"]}, "onnx"),  # a staging entry is deployc's staging prefix, nothing else
        ({"files": [7]}, "7"),
    ],
)
def test_a_marker_naming_anything_outside_the_out_dir_is_refused(tmp_path: Path, marker: dict, bad: str):
    (tmp_path / MARKER_NAME).write_text(json.dumps({"written_by": "deployc", **marker}))
    with pytest.raises(UsageError, match=rf"lists .*{bad}.*which is not a file inside the out dir"):
        read_marker(tmp_path)


def test_an_honest_marker_is_read(tmp_path: Path):
    (tmp_path / MARKER_NAME).write_text(json.dumps({"written_by": "deployc", "files": ["onnx/m.onnx"], "staging": []}))
    assert read_marker(tmp_path)["files"] == ["onnx/m.onnx"]


def test_the_cache_prunes_only_entries_it_can_prove_it_wrote(tmp_path: Path):
    store = CacheStore(tmp_path / "passes", ".onnx")
    assert store.claim() is None and (tmp_path / "passes" / CACHE_MARKER).is_file()
    keys = ["a" * 64, "b" * 64]
    for key in keys:
        store.write(key, b"model " + key.encode(), {"metrics": {}})
    forged = tmp_path / "passes" / "cc"
    forged.mkdir()
    (forged / f"{'c' * 64}.onnx").write_text("the user's")
    (forged / f"{'c' * 64}.json").write_text(json.dumps({"sha256": "x", "key": "c" * 64}))  # no deployc record
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.onnx").write_text("mine")
    (tmp_path / "passes" / "dd").symlink_to(tmp_path / "mine")  # a link where an entry folder goes
    assert len(store.entries()) == 3
    assert store.prune(0) == {"removed": 2, "bytes": store.entries()[0][3]}
    assert (forged / f"{'c' * 64}.onnx").read_text() == "the user's" and (tmp_path / "mine" / "x.onnx").exists()
    assert not store.has(keys[0]) and not store.has("d" * 64)


def test_a_folder_with_files_and_no_marker_is_never_claimed(tmp_path: Path):
    (tmp_path / "passes").mkdir()
    (tmp_path / "passes" / "model.onnx").write_text("mine")
    store = CacheStore(tmp_path / "passes", ".onnx")
    assert "no deployc cache marker" in store.claim()
    with pytest.raises(UsageError, match="is not a deployc cache"):
        store.prune(0)
    assert store.entries() == [] and (tmp_path / "passes" / "model.onnx").exists()


def _npz(path: Path, **members: tuple[dict, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, (header, body) in members.items():
            buf = io.BytesIO()
            np.lib.format.write_array_header_1_0(buf, header)
            z.writestr(f"{name}.npy", buf.getvalue() + body)
    return path


def test_npz_reads_only_the_arrays_asked_for_after_checking_their_headers(tmp_path: Path):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez(tmp_path / "d.npz", x=x, f=np.asfortranarray(x))
    with zipfile.ZipFile(tmp_path / "d.npz", "a") as z:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "<f8", "fortran_order": False, "shape": (1 << 40,)})
        z.writestr("huge.npy", buf.getvalue())
    with Npz(tmp_path / "d.npz", "data") as npz:
        assert npz.files == ["f", "huge", "x"]
        np.testing.assert_array_equal(npz.array("x", 1 << 20), x)
        np.testing.assert_array_equal(npz.array("f", 1 << 20), x)  # Fortran order read back as the same values
        with pytest.raises(UsageError, match=r"array 'huge' declares \[1099511627776\] float64 = 8\.0 TiB"):
            npz.array("huge", 1 << 30)


def test_npz_refuses_object_arrays_and_truncated_data(tmp_path: Path):
    path = _npz(
        tmp_path / "d.npz",
        o=({"descr": "|O", "fortran_order": False, "shape": (2,)}, b"pickle"),
        t=({"descr": "<i8", "fortran_order": False, "shape": (10,)}, b"\0" * 8),
    )
    with Npz(path, "data") as npz:
        with pytest.raises(UsageError, match="Object arrays cannot be loaded"):
            npz.array("o", 1 << 20)
        with pytest.raises(UsageError, match=r"declares \[10\] int64 = 80 bytes but holds 8 bytes"):
            npz.array("t", 1 << 20)


def test_safetensors_headers_are_checked_before_loading(tmp_path: Path):
    from safetensors.numpy import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": np.ones((2, 3), np.float32)}, str(good))
    check_safetensors(good, "model.weights")

    def forged(header: dict) -> Path:
        raw = json.dumps(header).encode()
        path = tmp_path / "bad.safetensors"
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 24)
        return path

    with pytest.raises(UsageError, match=r"tensor 'w' declares \[2, 3\] F32 = 24 bytes at bytes 0\.\.16"):
        check_safetensors(forged({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 16]}}), "k")
    with pytest.raises(UsageError, match=r"tensor 'w': its header entry is not"):
        check_safetensors(forged({"w": {"dtype": "F99", "shape": [2], "data_offsets": [0, 8]}}), "k")


def test_a_cache_laid_out_by_an_older_deployc_is_adopted_and_its_entries_proven_by_hash(tmp_path: Path):
    import hashlib

    key, blob = "e" * 64, b"an older entry"
    folder = tmp_path / "passes" / "ee"
    folder.mkdir(parents=True)
    (folder / f"{key}.onnx").write_bytes(blob)
    record = {
        "sha256": hashlib.sha256(blob).hexdigest(),
        "modified": True,
        "metrics": {},
        "tables": [],
        "facts_added": [],
    }
    (folder / f"{key}.json").write_text(json.dumps(record))
    store = CacheStore(tmp_path / "passes", ".onnx")
    assert store.claim() is None and store.marked()
    assert store.read(key)[1] == blob
    (folder / f"{key}.onnx").write_bytes(b"changed")  # no longer what its record says: not provably deployc's
    assert store.prune(0)["removed"] == 0
    (folder / f"{key}.onnx").write_bytes(blob)
    assert store.prune(0)["removed"] == 1 and not any(folder.iterdir())

"""`deployc package BUILD_DIR --target T --precision P --out FILE.tar.gz`: one artifact of a finished build as the
bundle a device team receives — the artifact, metadata.json, labels.txt (when the model has labels), README.md with
the validated figures, and SHA256SUMS — in a reproducible .tar.gz (same build, same bytes).

A build dir is untrusted data, read as `explain` and `bench` read it (commands/build_dir.py, over the I/O boundary
storage.files): manifest.json is parsed as JSON and checked field by field, nothing named in it is imported or
unpickled, and every file read is a regular file inside the build dir reached without a symbolic link. --out is
written atomically through the same boundary (a temp file renamed over it: never through a link).
The artifact must match the size and sha256 the manifest records (and manifest.json the hash the build's key file
records), else the build is unverifiable and refused. A failed gate is refused unless --allow-failed; a hash
mismatch never is: no bundle vouches for bytes the build did not validate."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

from deployc.commands.build_dir import artifact_file, read_manifest_and_digest
from deployc.commands.package_bundle import BUNDLE_FORMAT, Source, is_bundle, write_bundle
from deployc.errors import UsageError
from deployc.storage.files import file_digest, inside, open_regular, read_json, write_bytes_atomic
from deployc.storage.outdir import BUILD_KEY

MAX_KEY_BYTES = 1 << 20
MAX_BUNDLE_BYTES = 2 << 30  # an ONNX protobuf or a TFLite flatbuffer cannot be larger: the bundle is built in memory
KEY_FILE = BUILD_KEY  # the build key file: it records manifest.json's hash
_SHA256 = re.compile(r"[0-9a-f]{64}")


def read_source(build_dir: Path, target: str, precision: str) -> Source:
    """The build's manifest (read and shape-checked by build_dir, the reader explain and bench use) and the one
    artifact of `target`/`precision`, checked (not yet its bytes)."""
    manifest, digest = read_manifest_and_digest(build_dir)
    where = f"{build_dir / 'manifest.json'}"
    if not isinstance(manifest.get("manifest_version"), int):
        raise UsageError(f"{where}: not a deployc manifest (no manifest_version)")
    try:  # deployc writes strict JSON: NaN/Infinity mean the manifest is not its own (and no bundle could hold it)
        json.dumps(manifest, allow_nan=False)
    except ValueError:
        raise UsageError(f"{where}: holds NaN or Infinity; not a manifest deployc wrote") from None
    _check_key_file(build_dir, digest)
    artifacts = manifest["artifacts"]
    found = [i for i, a in enumerate(artifacts) if a.get("target") == target and a.get("precision") == precision]
    if len(found) != 1:
        have = ", ".join(f"{a.get('target')}/{a.get('precision')}" for a in artifacts)
        raise UsageError(f"{where}: no artifact {target}/{precision} (artifacts: {have or 'none'})")
    entry = artifacts[found[0]]
    at = f"{where}: artifact {target}/{precision}"
    if entry.get("path") is None:
        reason = (entry.get("gate") or {}).get("reason")
        raise UsageError(f"{at} has no file ({reason or 'not built'}); nothing to package")
    if not _SHA256.fullmatch(str(entry.get("sha256"))) or not isinstance(entry.get("bytes"), int):
        raise UsageError(f"{at}: 'sha256' or 'bytes' is missing or not a sha256 digest and a size")
    for i, io_spec in enumerate(entry.get("outputs") or []):  # inputs are checked by build_dir's ManifestView
        if not isinstance(io_spec.get("name"), str) or not isinstance(io_spec.get("shape"), list):
            raise UsageError(f"{at}: outputs[{i}] has no 'name' (a string) and 'shape' (a list)")
    if entry["bytes"] > MAX_BUNDLE_BYTES:
        raise UsageError(f"{at}: 'bytes' is over 2 GiB; no ONNX or TFLite artifact is that large")
    return Source(build_dir, manifest, digest, entry, found[0])


def _check_key_file(build_dir: Path, manifest_sha256: str) -> None:
    """manifest.json must be the one the build wrote: its hash in the build key file, when the build left one."""
    if not os.path.lexists(build_dir / KEY_FILE):
        return
    key = read_json(inside(build_dir, KEY_FILE, str(build_dir)), str(build_dir / KEY_FILE), MAX_KEY_BYTES)
    recorded = (key.get("files") or {}).get("manifest.json") if isinstance(key, dict) else None
    if recorded is not None and recorded != manifest_sha256:
        raise UsageError(
            f"{build_dir}: manifest.json does not match the hash its build recorded in {KEY_FILE}: it was changed "
            "after the build; the build is unverifiable"
        )


def check_gate(source: Source, allow_failed: bool) -> None:
    status = source.manifest.get("status")
    gate = source.entry.get("gate") if isinstance(source.entry.get("gate"), dict) else {}
    if allow_failed or (status == "passed" and gate.get("status") == "pass"):
        return
    label = f"{source.entry['target']}/{source.entry['precision']}"
    raise UsageError(
        f"{source.build_dir}: the build {status or 'has no status'}; {label}: gate {gate.get('status', 'missing')} "
        f"({gate.get('reason', 'no reason recorded')}). Pass --allow-failed to package it anyway (its metadata and "
        "README then say it failed)"
    )


def _resolve_out(out: Path) -> Path:
    """--out as deployc may write it: a .tar.gz/.tgz in an existing folder, not a link, not a folder (checked
    again when the bundle is placed: _place)."""
    if not out.name.endswith((".tar.gz", ".tgz")):
        raise UsageError(f"--out: '{out}' must end in .tar.gz or .tgz")
    if not out.parent.is_dir():
        raise UsageError(f"--out: the folder '{out.parent}' does not exist")
    if os.path.islink(out) or (out.exists() and not out.is_file()):
        raise UsageError(f"--out: '{out}' is a symbolic link or not a regular file; deployc never writes there")
    return out


def package(
    build_dir: str | Path, target: str, precision: str, out: str | Path, allow_failed: bool = False, force: bool = False
) -> dict[str, Any]:
    """Write the bundle; returns {'out', 'sha256', 'files', 'written'} ('written' False: --out already held these
    exact bytes, left as it was)."""
    out = _resolve_out(Path(out))
    source = read_source(Path(build_dir), target, precision)
    check_gate(source, allow_failed)
    path = artifact_file(source.build_dir, source.entry, source.index)  # inside, no link, size and sha256 match
    buffer = io.BytesIO()
    fd = open_regular(path, f"artifacts[{source.index}].path", "build artifact")
    with os.fdopen(fd, "rb") as artifact:
        names = write_bundle(buffer, source, artifact)  # hashes the bytes it copies: a swapped file is refused
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    written = _place(data, out, digest, force)
    return {"out": str(out), "sha256": digest, "files": names, "written": written}


def _place(data: bytes, out: Path, digest: str, force: bool) -> bool:
    """Write the bundle to --out through the I/O boundary (atomic: a fresh temp file renamed over it); False when
    --out already holds exactly these bytes (left untouched)."""
    if os.path.lexists(out):
        if os.path.islink(out) or not out.is_file():
            raise UsageError(f"--out: '{out}' is a symbolic link or not a regular file; never replaced")
        if file_digest(out) == digest:
            return False
        if not force:
            raise UsageError(f"--out: '{out}' exists; pass --force to replace it (only a deployc bundle is replaced)")
        if not is_bundle(out):
            raise UsageError(f"--out: '{out}' is not a {BUNDLE_FORMAT} bundle deployc wrote; it is never replaced")
    write_bytes_atomic(out, data)
    return True


def _cmd_package(args: argparse.Namespace) -> int:
    result = package(args.build_dir, args.target, args.precision, args.out, args.allow_failed, args.force)
    if args.json:
        print(json.dumps(result, indent=2))
    elif not args.quiet:
        state = "wrote" if result["written"] else "unchanged (already these bytes)"
        print(f"{state}: {result['out']} ({len(result['files'])} files; sha256 {result['sha256']})")
    return 0


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser] | None = None) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "package",
        parents=parents or [],
        help="bundle one validated artifact of a build for a device: artifact, metadata.json, README, SHA256SUMS",
    )
    p.add_argument("build_dir", type=Path, help="the --out folder of a finished deployc build")
    p.add_argument("--target", required=True, help="onnx | tflite | tensorrt")
    p.add_argument(
        "--precision", required=True, help="fp32 | fp16 | int8 | dynamic, or another runtime's row, e.g. int8@openvino"
    )
    p.add_argument("--out", required=True, type=Path, help="the bundle to write: FILE.tar.gz")
    p.add_argument("--allow-failed", action="store_true", help="package an artifact whose gate or build failed")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is a deployc bundle")
    p.set_defaults(func=_cmd_package)
    return p

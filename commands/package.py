"""`deployc package BUILD_DIR --target T --precision P --out FILE.tar.gz`: one artifact of a finished build as the
bundle a device team receives — the artifact, metadata.json, labels.txt (when the model has labels), README.md with
the validated figures, and SHA256SUMS — in a reproducible .tar.gz (same build, same bytes).

A build dir is untrusted data: manifest.json is parsed as JSON and checked field by field, nothing named in it is
imported or unpickled, and every file read is a regular file inside the build dir reached without a symbolic link.
The artifact must match the size and sha256 the manifest records (and manifest.json the hash the build's key file
records), else the build is unverifiable and refused. A failed gate is refused unless --allow-failed; a hash
mismatch never is: no bundle vouches for bytes the build did not validate."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from deployc.commands.package_bundle import BUNDLE_FORMAT, Source, is_bundle, write_bundle
from deployc.errors import UsageError
from deployc.storage.files import file_digest
from deployc.storage.outdir import BUILD_KEY

MAX_MANIFEST_BYTES = 64 << 20
MAX_KEY_BYTES = 1 << 20
KEY_FILE = BUILD_KEY  # the build key file: it records manifest.json's hash
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _open_inside(build_dir: Path, rel: str, what: str) -> int:
    """A read-only fd on build_dir/rel: a relative path without '..', every folder on the way and the file itself
    not a link, the file a regular file. UsageError otherwise."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or "\\" in rel or "\x00" in rel:
        raise UsageError(f"{build_dir}: manifest.json names {what} '{rel}', which is not a path inside the build dir")
    current = build_dir
    for part in parts[:-1]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            raise UsageError(f"{build_dir}: {what} '{rel}' is missing") from None
        if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
            raise UsageError(f"{build_dir}: '{current}' is a symbolic link or not a folder; refused")
    try:
        fd = os.open(build_dir / rel, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UsageError(f"{build_dir}: {what} '{rel}' is missing") from None
    except OSError as exc:
        raise UsageError(f"{build_dir}: cannot open {what} '{rel}' ({exc.strerror}; a link is refused)") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UsageError(f"{build_dir}: {what} '{rel}' is not a regular file")
    return fd


def read_small(build_dir: Path, rel: str, what: str, limit: int) -> bytes:
    fd = _open_inside(build_dir, rel, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UsageError(f"{build_dir}: {what} '{rel}' is over {limit >> 20} MiB; not a deployc build")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not strict JSON")  # deployc writes no NaN/Infinity: such a manifest is not its own


def _json(data: bytes, where: str) -> Any:
    try:
        return json.loads(data.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"{where}: not valid JSON ({str(exc)[:200]})") from None


def _field(obj: Any, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = obj.get(key) if isinstance(obj, dict) else None
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UsageError(f"{where}: '{key}' is missing or not a {getattr(kind, '__name__', kind)}")
    return value


def read_source(build_dir: Path, target: str, precision: str) -> Source:
    """The build's manifest and the one artifact of `target`/`precision`, checked (not yet its bytes)."""
    if not build_dir.is_dir():
        raise UsageError(f"{build_dir}: not a folder (give the --out folder of a deployc build)")
    raw = read_small(build_dir, "manifest.json", "manifest", MAX_MANIFEST_BYTES)
    digest = hashlib.sha256(raw).hexdigest()
    manifest = _json(raw, f"{build_dir / 'manifest.json'}")
    where = f"{build_dir / 'manifest.json'}"
    if not isinstance(manifest, dict) or not isinstance(manifest.get("manifest_version"), int):
        raise UsageError(f"{where}: not a deployc manifest")
    _check_key_file(build_dir, digest)
    artifacts = _field(manifest, "artifacts", list, where)
    found = [
        a for a in artifacts if isinstance(a, dict) and a.get("target") == target and a.get("precision") == precision
    ]
    if len(found) != 1:
        have = ", ".join(f"{a.get('target')}/{a.get('precision')}" for a in artifacts if isinstance(a, dict))
        raise UsageError(f"{where}: no artifact {target}/{precision} (artifacts: {have or 'none'})")
    entry = found[0]
    at = f"{where}: artifact {target}/{precision}"
    if entry.get("path") is None:
        reason = (entry.get("gate") or {}).get("reason") if isinstance(entry.get("gate"), dict) else None
        raise UsageError(f"{at} has no file ({reason or 'not built'}); nothing to package")
    _field(entry, "path", str, at)
    if not _SHA256.fullmatch(str(entry.get("sha256"))):
        raise UsageError(f"{at}: 'sha256' is not a sha256 digest")
    if _field(entry, "bytes", int, at) < 0:
        raise UsageError(f"{at}: 'bytes' is negative")
    for key in ("inputs", "outputs"):
        for i, io in enumerate(_field(entry, key, list, at)):
            _field(io, "name", str, f"{at}: {key}[{i}]")
            _field(io, "shape", list, f"{at}: {key}[{i}]")
    return Source(build_dir, manifest, digest, entry)


def _check_key_file(build_dir: Path, manifest_sha256: str) -> None:
    """manifest.json must be the one the build wrote: its hash in the build key file, when the build left one."""
    if not os.path.lexists(build_dir / KEY_FILE):
        return
    key = _json(read_small(build_dir, KEY_FILE, "build key file", MAX_KEY_BYTES), str(build_dir / KEY_FILE))
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
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with (
            os.fdopen(fd, "wb") as f,
            os.fdopen(_open_inside(source.build_dir, source.entry["path"], "artifact"), "rb") as a,
        ):
            names = write_bundle(f, source, a)
        digest = file_digest(tmp)
        written = _place(tmp, out, digest, force)
    finally:
        if os.path.lexists(tmp):
            tmp.unlink()
    return {"out": str(out), "sha256": digest, "files": names, "written": written}


def _place(tmp: Path, out: Path, digest: str, force: bool) -> bool:
    """Move the new bundle to --out; False when --out already holds exactly these bytes (left untouched)."""
    if os.path.lexists(out):
        if os.path.islink(out) or not out.is_file():
            raise UsageError(f"--out: '{out}' is a symbolic link or not a regular file; never replaced")
        if file_digest(out) == digest:
            return False
        if not force:
            raise UsageError(f"--out: '{out}' exists; pass --force to replace it (only a deployc bundle is replaced)")
        if not is_bundle(out):
            raise UsageError(f"--out: '{out}' is not a {BUNDLE_FORMAT} bundle deployc wrote; it is never replaced")
    os.replace(tmp, out)  # replaces a file, never writes through a link
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
    p.add_argument("--precision", required=True, help="fp32 | fp16 | int8 | dynamic")
    p.add_argument("--out", required=True, type=Path, help="the bundle to write: FILE.tar.gz")
    p.add_argument("--allow-failed", action="store_true", help="package an artifact whose gate or build failed")
    p.add_argument("--force", action="store_true", help="replace an existing --out that is a deployc bundle")
    p.set_defaults(func=_cmd_package)
    return p

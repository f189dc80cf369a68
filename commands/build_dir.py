"""A finished build folder, read as data and never as code (for `explain` and `bench`).

Build folders come from CI caches and downloaded artifacts: their manifest.json is untrusted. It is read through
the I/O boundary (a regular file, size-bounded) and checked against the shape deployc writes (a malformed one is
exit 2 naming the key); artifact paths are confined to the folder and must be regular files with the size and
hash the manifest records. The config stored in the manifest is used only when the parts a command needs name
no Python code (a model or data factory, a custom metric, a pickle): otherwise the user names the build's config
with --config, and nothing the folder names is imported or unpickled.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deployc.errors import UsageError
from deployc.storage.files import file_digest, inside, parse_json, read_bytes, regular_file

MAX_MANIFEST_BYTES = 64 << 20
MAX_ONNX_BYTES = 2 << 30  # an ONNX protobuf cannot be larger


class _Loose(BaseModel):
    model_config = ConfigDict(extra="allow")


class SpecEntry(_Loose):
    name: str
    shape: list[int | str]
    dtype: str


class ArtifactEntry(_Loose):
    target: str
    precision: str
    path: str | None = None
    sha256: str | None = None
    bytes: int | None = Field(None, ge=0)
    runtime: str = ""
    runtime_version: str = ""
    inputs: list[SpecEntry] = Field(default_factory=list)
    outputs: list[dict[str, Any]] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any] = Field(default_factory=dict)


class ManifestView(_Loose):
    """What explain and bench read of a manifest (other keys pass through unchecked)."""

    name: str
    artifacts: list[ArtifactEntry]
    config: dict[str, Any] = Field(default_factory=dict)
    passes: list[dict[str, Any]] = Field(default_factory=list)


def read_manifest(build_dir: Path) -> dict[str, Any]:
    """The build folder's manifest.json, checked (exit 2 naming the key when it is not deployc's shape)."""
    return read_manifest_and_digest(build_dir)[0]


def read_manifest_and_digest(build_dir: Path) -> tuple[dict[str, Any], str]:
    """read_manifest, plus the sha256 of the very bytes parsed (`package` checks it against the build key file)."""
    if not build_dir.is_dir():
        raise UsageError(f"{build_dir}: not a build folder")
    path = build_dir / "manifest.json"
    if not path.exists() and not path.is_symlink():
        raise UsageError(f"{build_dir}: no manifest.json (not a finished deployc build){killed_build_note(build_dir)}")
    data = read_bytes(inside(build_dir, "manifest.json", str(build_dir)), str(path), MAX_MANIFEST_BYTES, "manifest")
    raw = parse_json(data, path, str(path))
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: the top level is not a mapping; not a deployc manifest")
    try:
        ManifestView.model_validate(raw)
    except ValidationError as exc:
        from deployc.core.config import format_validation_error

        raise UsageError(format_validation_error(exc, ManifestView, str(path)).splitlines()[0]) from None
    return raw, hashlib.sha256(data).hexdigest()


def killed_build_note(build_dir: Path) -> str:
    """What a build killed before publishing had finished, from its staging folder's progress.json (read as
    untrusted data: regular files inside the folder, size-bounded, no link followed), as a sentence to append to
    the missing-manifest error; "" when there is none."""
    from deployc.storage.outdir import PROGRESS, STAGING_PREFIX

    notes = []
    for staging in sorted(build_dir.glob(f"{STAGING_PREFIX}*")):
        try:
            rel = f"{staging.name}/{PROGRESS}"
            raw = parse_json(read_bytes(inside(build_dir, rel, rel), rel, MAX_MANIFEST_BYTES, "progress"), rel, rel)
            done = [a for a in raw["artifacts"] if isinstance(a, dict)]
            rows = [f"{a['target']}/{a['precision']} {a.get('gate', {}).get('status', '?')}" for a in done]
        except (UsageError, OSError, KeyError, TypeError, AttributeError):
            continue  # not one deployc wrote, or cut short: nothing to say about it
        files = sum(1 for a in done if a.get("path"))
        notes.append(
            f"; a build was killed before publishing: {rel} lists {len(rows)} finished artifact(s) "
            f"({', '.join(rows) or 'none'}; {files} with a file and sha256 in that folder). Build again to publish"
        )
    return "".join(notes)


def artifact_file(build_dir: Path, entry: dict[str, Any], index: int) -> Path:
    """The artifact's file: inside the build folder, no link on the way, a regular file with the size and sha256
    the manifest records (checked before any runtime opens it)."""
    key = f"{build_dir / 'manifest.json'}: artifacts[{index}].path"
    path = inside(build_dir, entry.get("path"), key)
    regular_file(path, key, "build artifact")
    if path.stat().st_size != entry.get("bytes") or file_digest(path) != entry.get("sha256"):
        raise UsageError(f"{key}: '{entry['path']}' does not match the size and sha256 the manifest records")
    return path


def checked_artifacts(build_dir: Path, manifest: dict[str, Any]) -> None:
    """Every built artifact's file checked (artifact_file); skipped ones have no file."""
    for i, entry in enumerate(manifest["artifacts"]):
        if entry.get("path") and (entry.get("gate") or {}).get("status") != "skipped":
            artifact_file(build_dir, entry, i)


def load_onnx_artifact(build_dir: Path, entry: dict[str, Any], index: int) -> Any:
    """An ONNX artifact as a ModelProto, read through the boundary (external data is never followed)."""
    import onnx

    path = artifact_file(build_dir, entry, index)
    data = read_bytes(path, f"artifacts[{index}]", MAX_ONNX_BYTES, "model file")
    try:
        return onnx.load_model_from_string(data)
    except Exception as exc:
        raise UsageError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None


def code_named(cfg: Any, model: bool) -> str | None:
    """The first key of a config that names Python code deployc would import or unpickle: data factories always,
    and with `model` the model factory, an exported program, pickled weights and a custom metric."""
    for role in ("validation", "calibration", "train"):
        source = getattr(cfg.data, role)
        if source is not None and source.kind == "factory":
            return f"data.{role}: '{source.path}'"
    if not model:
        return None
    m = cfg.model
    for key in ("factory", "exported"):
        if getattr(m, key):
            return f"model.{key}: '{getattr(m, key)}'"
    if m.allow_pickle:
        return "model.allow_pickle: true"
    if ":" in cfg.data.metric:
        return f"data.metric: '{cfg.data.metric}'"
    return None


def config_for(build_dir: Path, manifest: dict[str, Any], config: str | Path | None, model: bool) -> Any:
    """The BuildConfig a command uses on a build folder: the user's --config when given; else the manifest's own
    (validated, nothing imported), only when what the command needs of it names no code (see code_named)."""
    from deployc.core.config import load_config

    if config is not None:
        return load_config(config)
    from deployc.driver.uptodate import CONFIG_NAME, default_out

    where = build_dir / "manifest.json"
    # a one-line build saved its config into the folder: its relative paths resolve against it, not the cwd
    base = build_dir.resolve() if default_out(build_dir / CONFIG_NAME, "") == build_dir else None
    try:
        cfg = load_config(manifest.get("config") or {}, base_dir=base)
    except UsageError as exc:
        raise UsageError(f"{where}: {str(exc).splitlines()[0]}") from None
    code = code_named(cfg, model)
    if code is not None:
        raise UsageError(
            f"{where}: its config names Python code ({code}); a build folder is data and deployc never runs code it "
            "names. Pass --config with the build's config file"
            + (f" (this one-line build saved it: --config {build_dir / CONFIG_NAME})" if base is not None else "")
        )
    return cfg

"""The files of a `deployc package` bundle and the reproducible .tar.gz that holds them: members in a fixed order
under one folder, mtime 0, uid/gid 0, no user or group names, fixed modes, gzip header without name or time."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from deployc.errors import UsageError
from deployc.storage.files import open_regular
from deployc.validation.gates import more_on_cpu

BUNDLE_FORMAT = "deployc-bundle/1"
FIRST = "metadata.json"  # the first member: is_bundle() reads only it
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,200}")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """What the bundle is made of, read and checked: the manifest, its sha256, and the chosen artifact's entry."""

    build_dir: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    entry: dict[str, Any]
    index: int  # the entry's place in manifest["artifacts"]


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _labels(embedded: dict[str, Any], config_model: dict[str, Any]) -> list[str] | None:
    """The labels the artifact carries (its deployc.labels metadata), else the config's inline list."""
    labels: Any = config_model.get("labels")
    text = embedded.get("deployc.labels")
    if isinstance(text, str):
        try:
            labels = json.loads(text)
        except ValueError:
            labels = None
    if isinstance(labels, list) and labels and all(isinstance(x, str) and "\n" not in x for x in labels):
        return labels
    return None


def bundle_metadata(source: Source) -> dict[str, Any]:
    """metadata.json: what a device team needs to run the artifact and what the build proved about it."""
    m, e = source.manifest, source.entry
    details = _dict(e.get("details"))
    embedded = _dict(details.get("metadata"))
    config_model = _dict(_dict(m.get("config")).get("model"))
    normalize = {i.get("name"): i.get("normalize") for i in config_model.get("inputs") or [] if isinstance(i, dict)}
    labels = _labels(embedded, config_model)
    metrics, ref, budget = _dict(e.get("metrics")), _dict(m.get("reference")), _dict(m.get("budget"))

    def io_spec(entry: dict[str, Any], with_normalize: bool) -> dict[str, Any]:
        out = {k: entry.get(k) for k in ("name", "shape", "dtype", "layout", "quantization")}
        if with_normalize:
            out["normalize"] = normalize.get(entry.get("name"))
        return out

    return {
        "bundle_format": BUNDLE_FORMAT,
        "model": {
            "name": m.get("name"),
            "version": embedded.get("deployc.model_version") or config_model.get("version"),
            "labels_file": "labels.txt" if labels else None,
            "labels": labels,
        },
        "artifact": {
            "file": artifact_name(source),
            "target": e.get("target"),
            "precision": e.get("precision"),
            "runtime": e.get("runtime"),
            "runtime_version": e.get("runtime_version"),
            "bytes": e.get("bytes"),
            "sha256": e.get("sha256"),
        },
        "inputs": [io_spec(i, True) for i in e["inputs"]],
        "outputs": [io_spec(o, False) for o in e["outputs"]],
        "validation": {
            "metric": ref.get("metric"),
            "reference_value": ref.get("value"),
            "value": metrics.get("metric"),
            "drift": metrics.get("drift"),
            "max_drift": budget.get("max_drift"),
            "agreement": metrics.get("agreement"),
            "max_abs_err": metrics.get("max_abs_err"),
            "samples": metrics.get("samples"),
            "data": ref.get("source"),
            "gate": e.get("gate"),
        },
        "quantization": {
            k: details[k]
            for k in ("io_dtype", "quantizer", "per_channel", "calibration_samples", "int8_coverage")
            if k in details
        },
        "npu": details.get("npu"),
        "build": {
            "status": m.get("status"),
            "pipeline": m.get("pipeline"),
            "config_sha256": m.get("config_sha256"),
            "manifest_sha256": source.manifest_sha256,
            "versions": m.get("versions"),
        },
    }


def artifact_name(source: Source) -> str:
    name = source.entry["path"].rsplit("/", 1)[-1]
    if not _SAFE_NAME.fullmatch(name) or name in (FIRST, "README.md", "SHA256SUMS", "labels.txt"):
        raise UsageError(f"{source.build_dir}: manifest.json names the artifact file '{name}'; not a deployc name")
    return name


def _clean(value: Any, cell: bool = True) -> str:
    """A value for one line of Markdown (a table cell: no pipes either); floats to 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    text = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return re.sub(r"[\x00-\x1f\x7f|]" if cell else r"[\x00-\x1f\x7f]", " ", text)


def _quant(q: Any) -> str:
    return f"{q.get('scale'):.9g} / {q.get('zero_point')}" if isinstance(q, dict) and "scale" in q else "— (float)"


def readme(meta: dict[str, Any]) -> str:
    """README.md: what the file is, how to feed it, what the build measured."""
    art, val, model = meta["artifact"], meta["validation"], meta["model"]
    gate = _dict(val.get("gate"))
    title = f"{_clean(model['name'])}" + (f" {_clean(model['version'])}" if model.get("version") else "")
    lines = [f"# {title}: {_clean(art['target'])} {_clean(art['precision'])}", ""]
    if gate.get("status") != "pass" or meta["build"].get("status") != "passed":
        lines += [f"**NOT VALIDATED**: gate {_clean(gate.get('status'))}: {_clean(gate.get('reason'))}", ""]
    lines += [
        f"`{art['file']}` ({art['bytes']} bytes), validated on {_clean(art['runtime'])} {_clean(art['runtime_version'])}. "
        "Check the files first: `sha256sum -c SHA256SUMS`.",
        "",
        "## Validated figures",
        "",
        f"- {_clean(val['metric'])}: {_clean(val['value'])} against {_clean(val['reference_value'])} for the model "
        f"as loaded, on {_clean(val['samples'])} samples of {_clean(val['data'])}",
        f"- drift {_clean(val['drift'])} (budget {_clean(val['max_drift'])}, in {_clean(val['metric'])} units); "
        f"agreement {_clean(val['agreement'])}; max abs error {_clean(val['max_abs_err'])}",
        f"- gate: {_clean(gate.get('status'))}: {_clean(gate.get('reason'))}",
        "",
        "## Inputs",
        "",
        "| name | shape | dtype | layout | normalize: (x - mean) / std | int8 scale / zero point |",
        "|---|---|---|---|---|---|",
    ]
    for i in meta["inputs"]:
        norm = i.get("normalize")
        shown = f"mean {_clean(norm.get('mean'))}, std {_clean(norm.get('std'))}" if isinstance(norm, dict) else "—"
        lines.append(
            f"| {_clean(i['name'])} | {_clean(i['shape'])} | {_clean(i['dtype'])} | {_clean(i.get('layout') or '—')} "
            f"| {shown} | {_quant(i.get('quantization'))} |"
        )
    lines += [
        "",
        "## Outputs",
        "",
        "| name | shape | dtype | layout | int8 scale / zero point |",
        "|---|---|---|---|---|",
    ]
    for o in meta["outputs"]:
        lines.append(
            f"| {_clean(o['name'])} | {_clean(o['shape'])} | {_clean(o['dtype'])} | {_clean(o.get('layout') or '—')} "
            f"| {_quant(o.get('quantization'))} |"
        )
    lines += [
        "",
        "An int8 input is fed as q = clamp(round(x / scale) + zero_point, -128, 127), after normalize when given; an "
        "int8 output reads y = (q - zero_point) * scale. Layout nhwc: [batch, height, width, channels].",
    ]
    if model.get("labels"):
        lines += ["", f"Class labels: `labels.txt`, one per line, line k (from 0) is class k ({len(model['labels'])})."]
    lines += _npu_lines(meta.get("npu"))
    build = meta["build"]
    lines += [
        "",
        "## Build",
        "",
        f"Pipeline `{_clean(build['pipeline'], cell=False)}`; build status {_clean(build['status'])}; config sha256 "
        f"{_clean(build['config_sha256'])} (also in the artifact's deployc.config_sha256 metadata); manifest sha256 "
        f"{_clean(build['manifest_sha256'])}.",
        "",
    ]
    return "\n".join(lines)


def _npu_lines(npu: Any) -> list[str]:
    npu = _dict(npu)
    reports = _dict(npu.get("accelerators"))
    if not npu:
        return []
    if not reports:
        return [
            "",
            f"NPU: {'integer-only' if npu.get('integer_only') else 'float ops present'} ({_clean(npu.get('check'))}).",
        ]
    lines = [
        "",
        "## NPU placement (Arm Vela, its default system configuration per accelerator)",
        "",
        "| accelerator | ops on NPU | est. ms | SRAM KiB | flash KiB | on the CPU (Vela's reason) |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in reports.items():
        r = _dict(r)
        if "error" in r:
            lines.append(f"| {_clean(name)} | — | — | — | — | not compiled: {_clean(r['error'])} |")
            continue
        cpu = "; ".join(f"{_clean(c.get('op'))}: {_clean(c.get('reason'))}" for c in r.get("cpu_fallback") or [])
        cpu += _clean(more_on_cpu(r))
        lines.append(
            f"| {_clean(name)} | {_clean(r.get('npu_ops'))}/{_clean((r.get('npu_ops') or 0) + (r.get('cpu_ops') or 0))} "
            f"| {_clean(r.get('inference_ms'))} | {_clean(r.get('sram_kib'))} | {_clean(r.get('flash_kib'))} | {cpu or '—'} |"
        )
    return lines


def bundle_texts(source: Source) -> dict[str, bytes]:
    """Every member but the artifact, SHA256SUMS last (it lists the artifact by the manifest's digest, which
    write_bundle checks against the bytes it copies)."""
    meta = bundle_metadata(source)
    files = {
        FIRST: (json.dumps(meta, indent=2, ensure_ascii=False, allow_nan=False) + "\n").encode(),
        "README.md": readme(meta).encode(),
    }
    if meta["model"]["labels"]:
        files["labels.txt"] = ("\n".join(meta["model"]["labels"]) + "\n").encode()
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    digests[artifact_name(source)] = source.entry["sha256"]
    files["SHA256SUMS"] = "".join(f"{digests[n]}  {n}\n" for n in sorted(digests)).encode()
    return files


def _info(name: str, size: int, directory: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type, info.mode = (tarfile.DIRTYPE, 0o755) if directory else (tarfile.REGTYPE, 0o644)
    return info


class _Checked(io.RawIOBase):
    """The artifact as tarfile reads it, hashed on the way: its bytes are checked as they are copied (one read,
    so a file swapped after a check cannot slip in)."""

    def __init__(self, f: IO[bytes]):
        self.f, self.hash, self.size = f, hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n is not None and n >= 0 else _CHUNK)
        self.hash.update(data)
        self.size += len(data)
        return data


def write_bundle(out: IO[bytes], source: Source, artifact: IO[bytes]) -> list[str]:
    """The bundle as a .tar.gz into `out`; the member names. UsageError when the artifact's bytes differ from the
    manifest's size or sha256."""
    texts = bundle_texts(source)
    root = f"{source.manifest.get('name')}-{source.entry['target']}-{source.entry['precision']}"
    if not _SAFE_NAME.fullmatch(root):
        raise UsageError(f"{source.build_dir}: manifest.json's name '{root}' is not a deployc name")
    name, size = artifact_name(source), source.entry["bytes"]
    order = [FIRST, "README.md", "SHA256SUMS", *(["labels.txt"] if "labels.txt" in texts else [])]
    checked = _Checked(artifact)
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        tar.addfile(_info(root, 0, directory=True))
        for member in order:
            tar.addfile(_info(f"{root}/{member}", len(texts[member])), io.BytesIO(texts[member]))
        try:
            tar.addfile(_info(f"{root}/{name}", size), checked)
        except OSError:  # tarfile: "unexpected end of data"
            checked.size = -1
        if checked.size != size or checked.read(1) or checked.hash.hexdigest() != source.entry["sha256"]:
            raise UsageError(
                f"{source.build_dir}: artifact '{source.entry['path']}' does not match the size and sha256 "
                "manifest.json records; the build is unverifiable"
            )
    return [f"{root}/{m}" for m in [*order, name]]


def is_bundle(path: Any) -> bool:
    """True when `path` is a bundle deployc wrote: a .tar.gz whose first file is metadata.json of BUNDLE_FORMAT."""
    try:
        with os.fdopen(open_regular(path, "--out"), "rb") as f, tarfile.open(fileobj=f, mode="r:gz") as tar:
            for _ in range(2):
                member = tar.next()
                if member is None:
                    return False
                if member.isfile() and member.name.endswith("/" + FIRST) and member.size <= 64 << 20:
                    data = tar.extractfile(member).read()
                    return json.loads(data.decode()).get("bundle_format") == BUNDLE_FORMAT
    except (OSError, UsageError, tarfile.TarError, ValueError, EOFError, AttributeError):
        return False
    return False

"""SWEEP.yaml: a base build config, the config keys to vary, how to search them and what to optimise.

    base: model.yaml                              # a build config, relative to this file
    vary:                                         # dotted config keys -> the values to try
      passes[0].prune.structured.ratio: [0.3, 0.5]
      targets.onnx.precision: [[fp32], [int8]]
    search: {method: grid}                        # grid | random | tpe (Optuna), with trials and seed
    objective: {minimize: latency_ms, artifact: onnx/int8, subject_to: all_gates}

Each combination of values is a variant: the base config with those keys replaced, built like any config.
Both files are read with build's strict YAML loader (duplicate keys, tags, size, nesting, aliases). A sweep builds
at most MAX_VARIANTS variants: a grid with more combinations is refused before Ray starts, and random/tpe need
`trials` (at most MAX_VARIANTS) when the space is larger; combinations are computed one at a time, never listed.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator

from deployc.core.config import StrictModel, format_validation_error, parse_yaml
from deployc.errors import UsageError
from deployc.storage.files import relative_path

MAX_VARIANTS = 1000  # builds one sweep runs; each takes seconds to minutes, so more is a typo or a bomb


class SearchConfig(StrictModel):
    method: Literal["grid", "random", "tpe"] = "grid"
    trials: int | None = Field(
        None, gt=0, le=MAX_VARIANTS, description="random/tpe: variants to build (default: every combination)"
    )
    seed: int = 0

    @model_validator(mode="after")
    def _trials_for_search_only(self) -> SearchConfig:
        if self.method == "grid" and self.trials is not None:
            raise ValueError("grid builds every combination; trials goes with method random or tpe")
        return self


class ObjectiveConfig(StrictModel):
    """Which artifact the sweep picks: the lowest `minimize` among the artifacts that satisfy `subject_to`."""

    minimize: Literal["latency_ms", "bytes", "drift"] = Field(
        "latency_ms", description="batch-1 latency, file size, or metric drift from the model as loaded"
    )
    artifact: str | None = Field(
        None, pattern=r"^[\w.-]+/[\w.-]+$", description="only this target/precision, e.g. onnx/int8 (default: any)"
    )
    subject_to: Literal["all_gates", "own_gate"] = Field(
        "all_gates", description="all_gates: every gate of the variant passes; own_gate: the artifact's own gate"
    )


class ResourcesConfig(StrictModel):
    """What Ray reserves for each build; a build's torch runs with num_cpus threads."""

    num_cpus: int = Field(1, gt=0, le=4096)
    num_gpus: float = Field(0, ge=0, le=1024)
    memory: int | None = Field(None, gt=0, le=1 << 50, description="bytes of memory reserved per build")


class SweepConfig(StrictModel):
    base: Path = Field(description="the build config every variant starts from, relative to the sweep file")
    vary: dict[str, list[Any]] = Field(description="dotted config key -> values, e.g. quantize.calibration: [minmax]")
    search: SearchConfig = Field(default_factory=SearchConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    retries: int = Field(
        2,
        ge=0,
        le=100,
        description="Ray retries of a build whose worker died (a build that raises fails the same way again)",
    )

    @field_validator("vary")
    @classmethod
    def _values_given(cls, vary: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if not vary:
            raise ValueError("give at least one key to vary")
        for key, values in vary.items():
            if not values:
                raise ValueError(f"'{key}' has no values")
            seen = [json.dumps(v, sort_keys=True, default=str) for v in values]
            twice = next((v for i, v in enumerate(seen) if v in seen[:i]), None)
            if twice is not None:
                raise ValueError(f"'{key}' lists {twice} twice (two variants would be one build)")
        return vary


@dataclass(frozen=True)
class Variant:
    id: str
    overrides: dict[str, Any]  # vary key -> value, in vary order
    raw: dict[str, Any]  # the base config with the overrides applied


@dataclass(frozen=True)
class Sweep:
    path: Path
    config: SweepConfig
    base_path: Path
    base_raw: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.base_path.resolve().parent

    @property
    def size(self) -> int:
        """How many combinations the vary lists make."""
        n = 1
        for values in self.config.vary.values():
            n *= len(values)
        return n

    def combination(self, index: int) -> dict[str, Any]:
        """The index-th combination of the grid (row-major over the vary keys, first key slowest)."""
        picked: dict[str, Any] = {}
        for key, values in reversed(self.config.vary.items()):
            index, i = divmod(index, len(values))
            picked[key] = values[i]
        return {key: picked[key] for key in self.config.vary}

    def variant(self, overrides: dict[str, Any]) -> Variant:
        raw = self.base_raw
        for key, value in overrides.items():
            raw = set_key(raw, key, value, f"{self.path}: vary.{key}")
        vid = variant_id(overrides)
        if len(relative_path(vid, f"{self.path}: variant id", self.path.parent).parts) != 1:
            raise UsageError(f"{self.path}: variant id '{vid}' is not one folder name")  # variant_id never makes one
        return Variant(vid, dict(overrides), raw)

    def one_value_each(self) -> list[Variant]:
        """One variant per vary value (the other keys at their first value): every value checked in
        sum(len) configs, not product(len), for a search too large to check every combination."""
        first = {key: values[0] for key, values in self.config.vary.items()}
        seen: dict[str, Variant] = {}
        for key, values in self.config.vary.items():
            for value in values:
                v = self.variant({**first, key: value})
                seen.setdefault(v.id, v)
        return list(seen.values())


def load_sweep(path: str | Path) -> Sweep:
    """The sweep file and its base config; every vary key is checked against the base here."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a sweep file")
    raw = parse_yaml(path, "sweep", "sweep file")
    if not isinstance(raw, dict):
        raise UsageError(f"{path}: the top level must be a mapping with base, vary, search, objective")
    try:
        config = SweepConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, SweepConfig, str(path))) from None
    base_path = config.base if config.base.is_absolute() else path.resolve().parent / config.base
    if base_path.is_dir():
        raise UsageError(f"{path}: base: '{base_path}' is a folder, not a build config")
    base_raw = parse_yaml(base_path, f"{path}: base", "base config")
    if not isinstance(base_raw, dict):
        raise UsageError(f"{base_path}: the base config's top level must be a mapping of keys")
    sweep = Sweep(path, config, base_path, base_raw)
    for key, values in config.vary.items():
        set_key(base_raw, key, values[0], f"{path}: vary.{key}")
    return sweep


_PART = re.compile(r"^([^\[\]]*)((?:\[\d+\])*)$")


def parse_key(key: str, where: str) -> list[str | int]:
    """'passes[0].prune.structured.ratio' -> ['passes', 0, 'prune', 'structured', 'ratio']."""
    parts: list[str | int] = []
    for piece in key.split("."):
        m = _PART.match(piece)
        if not m or not (m.group(1) or m.group(2)):
            raise UsageError(f"{where}: '{key}' is not a dotted key like quantize.calibration or passes[0].finetune.lr")
        if m.group(1):
            parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\d+", m.group(2))]
    return parts


def set_key(raw: dict[str, Any], key: str, value: Any, where: str) -> dict[str, Any]:
    """A copy of `raw` with the value at dotted `key` replaced. A dotted run matches the longest existing key first,
    because pass names hold dots ('prune.structured'); missing mappings are created, list entries are not."""
    parts = parse_key(key, where)
    root = copy.deepcopy(raw)
    node: Any = root
    path, i = "", 0
    while True:
        part = parts[i]
        if isinstance(part, int):
            if not isinstance(node, list):
                raise UsageError(f"{where}: {path or 'the config'} is not a list, so [{part}] names nothing")
            if part >= len(node):
                raise UsageError(f"{where}: {path} has {len(node)} entries, so [{part}] names nothing")
            step, width, shown = part, 1, f"{path}[{part}]"
        else:
            if not isinstance(node, dict):
                raise UsageError(f"{where}: {path or 'the config'} is not a mapping, so '{part}' names nothing")
            run: list[str] = []
            for p in parts[i:]:
                if isinstance(p, int):
                    break
                run.append(p)
            width = next((n for n in range(len(run), 0, -1) if ".".join(run[:n]) in node), 1)
            step = ".".join(run[:width])
            if step not in node and path.endswith("]"):  # a list entry (a pass) keeps its one key
                raise UsageError(f"{where}: {path} is {sorted(node)}; it has no '{step}'")
            shown = f"{path}.{step}" if path else step
        i += width
        if i == len(parts):
            node[step] = copy.deepcopy(value)
            return root
        child = node[step] if isinstance(node, list) else node.get(step)
        if child is None:
            if isinstance(parts[i], int):
                raise UsageError(f"{where}: {shown} is not set in the base config, so [{parts[i]}] names nothing")
            child = node[step] = {}
        node, path = child, shown


def _leaf(key: str) -> str:
    """'passes[0].prune.structured.ratio' -> 'ratio'; 'passes[1]' -> 'passes1'."""
    return re.sub(r"\W", "", key.rsplit(".", 1)[-1])


def _short(value: Any, keys: bool = True) -> str:
    """[fp32, int8] -> 'fp32+int8'; {onnx: {precision: [int8]}} -> 'onnx.int8' (inner mappings by their values)."""
    if isinstance(value, list):
        return "+".join(_short(v, keys) for v in value)
    if isinstance(value, dict):
        if not keys:
            return "+".join(_short(v, False) for v in value.values())
        return "+".join(f"{k}.{_short(v, False)}" if v else str(k) for k, v in value.items())
    return str(value)


def variant_id(overrides: dict[str, Any]) -> str:
    """Readable and stable: 'ratio=0.3_precision=int8-1f0c2a9e' (the hash covers the full values)."""
    digest = hashlib.sha256(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()[:8]
    slug = "_".join(f"{_leaf(k)}={_short(v)}" for k, v in overrides.items())
    slug = re.sub(r"[^A-Za-z0-9_.=+-]+", "-", slug)[:48].strip("-_.")
    return f"{slug}-{digest}" if slug else digest

"""The build config: a typed schema (unknown keys rejected with a did-you-mean) and its loader."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployc.errors import UsageError


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class InputConfig(StrictModel):
    name: str
    shape: list[int | str] = Field(description="dimensions; a string names a dynamic axis, e.g. [batch, 1, 8, 8]")
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    dynamic_axes: dict[int, str] = Field(default_factory=dict, description="extra dynamic axes: {axis: name}")

    def resolved_shape(self) -> tuple[int | str, ...]:
        dims = list(self.shape)
        for axis, axis_name in self.dynamic_axes.items():
            if not 0 <= axis < len(dims):
                raise ValueError(f"dynamic axis {axis} is outside shape {self.shape}")
            dims[axis] = axis_name
        return tuple(dims)


class ModelConfig(StrictModel):
    factory: str | None = Field(
        None, description="'file.py:callable' or 'package.module:callable' returning an nn.Module"
    )
    weights: Path | None = Field(None, description=".safetensors, or a state_dict file loaded with weights_only=True")
    onnx: Path | None = Field(None, description="an .onnx file; torch-level passes refuse it")
    exported: Path | None = Field(None, description="a torch.export .pt2 file")
    inputs: list[InputConfig] = Field(default_factory=list)
    allow_pickle: bool = Field(False, description="allow loading pickled objects (runs code from the file)")

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = [k for k in ("factory", "onnx", "exported") if getattr(self, k) is not None]
        if len(sources) > 1:
            raise ValueError(f"give exactly one of factory, onnx, exported (got {', '.join(sources)})")
        if not sources and self.weights is None:
            raise ValueError("give one of factory, onnx, exported (or weights with allow_pickle: true)")
        if self.weights is not None and sources and sources[0] != "factory":
            raise ValueError(f"weights go with a factory, not with {sources[0]}")
        return self


class DataSource(StrictModel):
    """Where samples come from. Shorthand strings: 'digits', 'digits:train', 'x.npz', 'file.py:fn'."""

    kind: Literal["digits", "npz", "factory"]
    path: str | None = None
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(None, gt=0, description="use only the first N samples")

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value == "digits" or value.startswith("digits:"):
            return {"kind": "digits", "split": value.partition(":")[2] or "test"}
        if value.endswith(".npz"):
            return {"kind": "npz", "path": value}
        if ":" in value:
            return {"kind": "factory", "path": value}
        raise ValueError(f"'{value}' is not 'digits[:split]', a .npz file or 'file.py:callable'")

    @model_validator(mode="after")
    def _path_needed(self) -> DataSource:
        if self.kind != "digits" and not self.path:
            raise ValueError(f"a '{self.kind}' source needs 'path'")
        return self


class DataConfig(StrictModel):
    train: DataSource | None = Field(
        None, description="labelled samples for passes that train; defaults to digits' train split"
    )
    calibration: DataSource | None = Field(
        None, description="samples for int8 calibration; defaults to validation's train split"
    )
    validation: DataSource | None = None
    metric: str = Field("top1", description="top1 | top5 | cosine | mse | 'file.py:callable'")
    batch_size: int = Field(64, gt=0)


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


class TuneSpec(StrictModel):
    """Accuracy-aware tuning of static int8: try candidates in a fixed order until one is within budget."""

    max_drift: float | None = Field(None, ge=0, description="drift the tuner aims for; default validate.max_drift")
    max_trials: int = Field(12, ge=1, description="most int8 candidates built and measured")
    data: Literal["validation", "calibration"] = Field(
        "validation",
        description="samples the tuner scores on: validation (as Intel Neural Compressor does; the "
        "gate then re-measures the samples the tuner chose on) or calibration",
    )
    methods: list[CalibrationMethod] = Field(
        default_factory=lambda: ["minmax", "entropy", "percentile"], description="calibration methods tried, in order"
    )
    max_fallback: int = Field(8, ge=0, description="most layers kept in fp32, the most sensitive first")
    sensitivity_samples: int = Field(64, gt=0, description="samples used to rank layers by sensitivity")


class QuantizeSpec(StrictModel):
    """One quantization spec per build; each target realises it with its runtime's own quantizer."""

    per_channel: bool = True
    calibration: CalibrationMethod = "minmax"
    samples: int = Field(128, gt=0, description="calibration samples")
    symmetric_activations: bool = False
    exclude: list[str] = Field(default_factory=list, description="node names kept in float")
    percentile: float = Field(99.999, gt=0, le=100)
    tune: TuneSpec | None = Field(
        None, description="accuracy-aware tuning of int8 when set (e.g. tune: {max_trials: 8})"
    )
    channel_range_ratio: float = Field(
        100.0,
        gt=1,
        description="warn when a per-tensor quantized activation's channel ranges differ by more than this factor",
    )


class ValidateConfig(StrictModel):
    max_drift: float = Field(
        0.01, ge=0, description="largest allowed metric drift (reference - artifact), as a fraction"
    )
    latency_runs: int = Field(20, ge=1, description="batch-1 runs timed per artifact (median reported)")
    latency_gate: Literal["off", "warn", "fail"] = Field(
        "warn", description="int8/dynamic artifact not faster than fp32 on the same runtime: log it, or fail its gate"
    )


class BuildConfig(StrictModel):
    name: str = Field("model", pattern=r"^[A-Za-z0-9_.-]+$")
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    passes: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    targets: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {"onnx": {}})
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True, description="paths resolve against this")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("passes")
    @classmethod
    def _one_key_each(cls, passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(passes):
            if len(entry) != 1:
                raise ValueError(f"passes[{i}] must be one {{pass-name: {{options}}}} mapping, got keys {list(entry)}")
        return passes

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


def suggest(word: str, choices: list[str] | set[str]) -> str:
    """' (did you mean 'x'?)' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """Field names (and aliases) of the config model reached by following `loc`."""
    current: Any = model
    for part in loc:
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part) or next(
                (f for f in current.model_fields.values() if f.alias == part), None
            )
            if field is None:
                return set()
            current = _unwrap(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return {f.alias or n for n, f in current.model_fields.items() if n != "base_dir"}
    return set()


def _unwrap(annotation: Any) -> Any:
    """The BaseModel class inside Optional[...] / list[...], if any."""
    for arg in getattr(annotation, "__args__", ()) or ():
        inner = _unwrap(arg)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner
    return annotation


def format_validation_error(err: ValidationError, model: type[BaseModel], where: str) -> str:
    """One line per problem: '<where>: key.path: message (did you mean ...)'."""
    lines = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        if e["type"] == "extra_forbidden":
            hint = suggest(loc[-1], _fields_at(model, loc[:-1]))
            lines.append(f"{where}: {key}: unknown key{hint}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{where}: {key or '(top level)'}: {msg}")
    return "\n".join(lines)


def load_config(source: str | Path | dict[str, Any] | BuildConfig, base_dir: Path | None = None) -> BuildConfig:
    """A BuildConfig from a YAML/JSON file path, a dict, or an existing BuildConfig."""
    if isinstance(source, BuildConfig):
        return source
    where = "config"
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = str(path)
        try:
            raw = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise UsageError(f"{path}: config file not found") from None
        except yaml.YAMLError as exc:
            raise UsageError(f"{path}: not valid YAML: {exc}") from None
        base_dir = base_dir or path.resolve().parent
    else:
        raw = dict(source)
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: the top level must be a mapping of keys (name, model, data, passes, targets, ...)")
    raw = {"base_dir": Path.cwd(), **raw} if base_dir is None else {**raw, "base_dir": base_dir}
    try:
        return BuildConfig.model_validate(raw)
    except ValidationError as exc:
        raise UsageError(format_validation_error(exc, BuildConfig, where)) from None

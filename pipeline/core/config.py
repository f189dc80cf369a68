"""The build config: a typed schema (unknown keys rejected with a did-you-mean) and its loader."""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from deployc.errors import UsageError
from deployc.storage.files import read_bytes


def each_once(values: list[str], noun: str) -> list[str]:
    """`values` unchanged when none repeats; else the ValueError a field validator raises ('lists a stage twice')."""
    if len(set(values)) != len(values):
        raise ValueError(f"lists {noun} twice: {values}")
    return values


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are errors, never silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


MAX_SAMPLE_BYTES = 2**31  # one sample of one input; larger declared shapes are typos ([1, 100000, 100000])
_ITEMSIZE = {"float32": 4, "float16": 2, "int64": 8, "int32": 4, "bool": 1}


class NormalizeSpec(StrictModel):
    """How the app prepares an input: x_model = (x - mean) / std, per channel (axis 1) or one value for all.
    Recorded in every artifact's metadata and the package; deployc never applies it (the model takes x_model)."""

    mean: float | list[float] = Field(description="one value, or one per channel")
    std: float | list[float] = Field(description="one value, or one per channel; never 0")

    @model_validator(mode="after")
    def _sane(self) -> NormalizeSpec:
        mean, std = _as_list(self.mean), _as_list(self.std)
        if not mean or not std or len(mean) > 4096 or len(std) > 4096:
            raise ValueError("mean and std take one value or one per channel (at most 4096)")
        if len(mean) > 1 and len(std) > 1 and len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} values and std {len(std)}; give one per channel for both")
        if not all(math.isfinite(v) for v in mean + std):
            raise ValueError("mean and std must be finite numbers")
        if any(v == 0 for v in std):
            raise ValueError("std holds 0; every std must be non-zero")
        return self

    def channels(self) -> int:
        """How many channels the spec names (1 when both are single values)."""
        return max(len(_as_list(self.mean)), len(_as_list(self.std)))


def _as_list(value: float | list[float]) -> list[float]:
    return [float(v) for v in value] if isinstance(value, list) else [float(value)]


class InputConfig(StrictModel):
    name: str = Field(min_length=1, max_length=200)
    shape: list[int | str] = Field(
        max_length=16, description="dimensions; a string names a dynamic axis, e.g. [batch, 1, 8, 8]; [] is a scalar"
    )
    dtype: Literal["float32", "float16", "int64", "int32", "bool"] = "float32"
    dynamic_axes: dict[int, str] = Field(default_factory=dict, description="extra dynamic axes: {axis: name}")
    normalize: NormalizeSpec | None = Field(
        None, description="{mean, std} the app applies before the model: recorded in artifact metadata"
    )

    @model_validator(mode="after")
    def _sane_shape(self) -> InputConfig:
        for i, d in enumerate(self.shape):
            if isinstance(d, int) and d < 1:
                raise ValueError(f"shape[{i}] is {d}; fixed dimensions are positive integers")
            if isinstance(d, str) and not d.strip():
                raise ValueError(f"shape[{i}] is an empty axis name")
        for axis in self.dynamic_axes:
            if not 0 <= axis < len(self.shape):
                raise ValueError(f"dynamic_axes: axis {axis} is outside shape {self.shape}")
        if self.normalize is not None and self.normalize.channels() > 1:
            channels = self.shape[1] if len(self.shape) >= 3 else None
            if channels != self.normalize.channels():
                raise ValueError(
                    f"normalize gives {self.normalize.channels()} values per channel, but shape {self.shape} has "
                    f"{channels if isinstance(channels, int) else 'no fixed'} channels at axis 1"
                )
        fixed = math.prod(d for d in self.resolved_shape() if isinstance(d, int))
        if fixed * _ITEMSIZE[self.dtype] > MAX_SAMPLE_BYTES:
            raise ValueError(
                f"shape {self.shape} ({self.dtype}) is {fixed * _ITEMSIZE[self.dtype] / 2**30:.1f} GiB per sample; "
                f"more than {MAX_SAMPLE_BYTES // 2**30} GiB is refused as a likely typo"
            )
        return self

    def resolved_shape(self) -> tuple[int | str, ...]:
        dims = list(self.shape)
        for axis, axis_name in self.dynamic_axes.items():
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
    outputs: list[str] | None = Field(
        None,
        max_length=1024,
        description="names of the model's outputs, in order, used on every target (default: output_0, output_1, "
        "...; an ONNX model's own names)",
    )
    labels: Path | list[str] | None = Field(
        None, description="class labels: a UTF-8 file with one label per line, or a list; recorded in artifacts"
    )
    version: str | None = Field(
        None, min_length=1, max_length=100, description="the model's version, recorded in artifacts"
    )
    allow_pickle: bool = Field(False, description="allow loading pickled objects (runs code from the file)")

    @field_validator("outputs")
    @classmethod
    def _output_names(cls, names: list[str] | None) -> list[str] | None:
        for name in names or []:
            if not OUTPUT_NAME.fullmatch(name):
                raise ValueError(
                    f"'{name}' is not an output name: 1-200 of letters, digits, '_', '.', '-', ':', '/', "
                    "starting with a letter or '_'"
                )
        dup = next((n for n in names or [] if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"the name '{dup}' is used twice")
        return names

    @field_validator("labels")
    @classmethod
    def _label_list(cls, labels: Path | list[str] | None) -> Path | list[str] | None:
        if isinstance(labels, list):
            if not labels or len(labels) > MAX_LABELS:
                raise ValueError(f"give 1 to {MAX_LABELS} labels")
            bad = next((i for i, x in enumerate(labels) if not x.strip() or len(x) > 200 or "\n" in x), None)
            if bad is not None:
                raise ValueError(f"label [{bad}] is empty, longer than 200 characters or holds a line break")
        return labels

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        sources = [k for k in ("factory", "onnx", "exported") if getattr(self, k) is not None]
        if len(sources) > 1:
            raise ValueError(f"give exactly one of factory, onnx, exported (got {', '.join(sources)})")
        if not sources and self.weights is None:
            raise ValueError("give one of factory, onnx, exported (or weights with allow_pickle: true)")
        if self.weights is not None and sources and sources[0] != "factory":
            raise ValueError(f"weights go with a factory, not with {sources[0]}")
        names = [i.name for i in self.inputs]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup is not None:
            raise ValueError(f"inputs: the name '{dup}' is used twice")
        clash = next((n for n in self.outputs or [] if n in names), None)
        if clash is not None:
            raise ValueError(f"outputs: '{clash}' is also an input's name; inputs and outputs need distinct names")
        return self


OUTPUT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.:/-]{0,199}")
MAX_LABELS = 100_000
MAX_LABELS_BYTES = 1 << 20

FACTORY_CAP = 100_000  # samples read from a data factory without data.*.limit: a generator may never end


class DataSource(StrictModel):
    """Where samples come from. Shorthand strings: 'digits', 'digits:train', 'x.npz', 'file.py:fn'."""

    kind: Literal["digits", "npz", "factory"]
    path: str | None = None
    split: Literal["train", "test"] = "test"
    limit: int | None = Field(
        None, gt=0, description=f"use only the first N samples (a factory is read at most {FACTORY_CAP} without it)"
    )

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


DataLayout = Literal["nchw", "nhwc", "ncw", "nwc", "ncdhw", "ndhwc", "channels_first", "channels_last"]
DataCheck = Literal["chance", "constant", "nondeterministic", "scale", "parts"]


class DataConfig(StrictModel):
    train: DataSource | None = Field(
        None, description="labelled samples for passes that train; defaults to digits' train split"
    )
    calibration: DataSource | None = Field(
        None, description="samples for int8 calibration; defaults to validation's train split"
    )
    validation: DataSource | None = None
    metric: str = Field("top1", description="top1 | top5 | cosine | mse | 'file.py:callable'")
    output: int | str | None = Field(
        None,
        description="the output the metric reads (index, or name for ONNX models); default: every output for "
        "cosine/mse, the first for top1/top5 and custom metrics",
    )
    batch_size: int = Field(64, gt=0, le=65_536)
    layout: dict[str, DataLayout] = Field(
        default_factory=dict,
        description="the layout of each input's data when it is not the model's, e.g. {image: nhwc}: channels-last "
        "samples are transposed to the model's channels-first axes (every role: validation, calibration, train)",
    )
    skip_checks: list[DataCheck] = Field(
        default_factory=list,
        description="sanity checks to skip: chance (reference metric at chance level), constant (an output the "
        "metric reads is the same for every sample), nondeterministic (the model gives different outputs on the "
        "same input), scale (the roles' samples of an input differ in scale), parts (judging cosine/mse also per "
        "channel group when an output's channels differ in scale by orders of magnitude)",
    )
    output_parts: dict[str, dict[str, tuple[int, int]]] = Field(
        default_factory=dict,
        description="named channel ranges of an output judged apart by cosine/mse, e.g. {output0: {boxes: [0, 4], "
        "scores: [4, 84]}} (axis 1, samples first); without it, channel groups differing in scale by orders of "
        "magnitude are found from the reference",
    )


CalibrationMethod = Literal["minmax", "entropy", "percentile"]


RemedyStage = Literal["calibration", "granularity", "symmetry", "smoothing", "fallback"]
REMEDY_STAGES: tuple[str, ...] = ("calibration", "granularity", "symmetry", "smoothing", "fallback")


class RemediesSpec(StrictModel):
    """What an int8 artifact that misses its budget tries, in a fixed order, until one passes its gate."""

    max_trials: int = Field(8, ge=1, description="most artifacts built and validated, the one as configured included")
    stages: list[RemedyStage] = Field(
        default_factory=lambda: list(REMEDY_STAGES),
        description="stages tried; they always run in the order calibration, granularity, symmetry, smoothing, "
        "fallback",
    )
    methods: list[CalibrationMethod] = Field(
        default_factory=lambda: ["minmax", "percentile", "entropy"],
        description="calibration methods the calibration stage tries, in order",
    )
    # 0.8: on MiniLM 0.5 made int8 worse (onnx 0.0126 vs 0.0088 drift without, symmetric 0.067 vs 0.019); 0.7-0.8
    # best (0.0036 onnx, 0.0025 tensorrt), benchmarks/minilm_int8.py
    smoothing_alpha: float = Field(0.8, gt=0, lt=1, description="SmoothQuant alpha the smoothing stage tries")
    max_fallback: int = Field(16, ge=0, description="most layers kept in float (fp16 on tensorrt), worst first")
    sensitivity_samples: int = Field(32, gt=0, description="calibration samples the fallback ranking runs on")
    max_seconds: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="wall-time budget of the remedy trials; no trial starts after it, the best so far ships "
        "(0: only the trial as configured; None: no limit). The trials a build runs then depend on the machine",
    )

    @field_validator("stages")
    @classmethod
    def _known_once(cls, stages: list[str]) -> list[str]:
        return each_once(stages, "a stage")


_TUNE_MOVED = (
    "replaced by quantize.remedies, which every int8 target (onnx, tensorrt, tflite) now runs by default when its "
    "gate fails; write e.g. `remedies: {max_trials: 10, max_fallback: 8}` (methods, max_fallback and "
    "sensitivity_samples keep their meaning; the budget is validate.max_drift and trials are scored on "
    "data.validation), or `remedies: off`"
)


class QuantizeSpec(StrictModel):
    """One quantization spec per build; each target realises it with its runtime's own quantizer."""

    per_channel: bool = True
    calibration: CalibrationMethod = "minmax"
    samples: int = Field(128, gt=0, description="calibration samples")
    symmetric_activations: bool = False
    exclude: list[str] = Field(default_factory=list, description="node names kept in float")
    percentile: float = Field(99.999, gt=0, le=100)
    remedies: RemediesSpec | Literal["off"] = Field(
        default_factory=RemediesSpec,
        description="accuracy remedies for an int8 artifact that fails its gate (pipeline/validation/remedies.py); off: none",
    )
    channel_range_ratio: float = Field(
        100.0,
        gt=1,
        description="warn when a per-tensor quantized activation's channel ranges differ by more than this factor; "
        "a Concat whose output range exceeds an input's by more stays float (onnx int8)",
    )
    smoothing: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="SmoothQuant alpha: before int8, move activation outlier ranges into the weights of MatMul/Gemm "
        "(Linear) layers by per-channel scales max|X|^alpha / max|W|^(1-alpha); None: no smoothing",
    )
    bias_correction: bool = Field(
        True,
        description="fold each int8 op's mean output shift from quantization into its bias (onnx and tensorrt int8, "
        "passes/bias_correction.py); tflite: not applied, ai-edge-quantizer derives its int32 biases itself",
    )
    recurrent: Literal["scan", "unroll", "float"] = Field(
        "scan",
        description="onnx and tensorrt int8 of LSTM/GRU (passes/recurrent_int8.py): 'scan' hoists every step's input "
        "projection into one int8 MatMul and runs the recurrence in an ONNX Scan whose body has int8 recurrent "
        "MatMuls (the default: resemblyzer's int8 runs as fast as its fp32 LSTM kernel on onnxruntime, "
        "benchmarks/recurrent_latency.py); 'unroll' writes one set of nodes per time step of a fixed-length layer "
        "(resemblyzer's 160 steps: 8197 nodes, ~40x slower than fp32 on onnxruntime); 'float' keeps them whole",
    )

    @model_validator(mode="before")
    @classmethod
    def _tune_moved(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tune" in data:
            raise ValueError(f"'tune' is {_TUNE_MOVED}")
        return data

    @field_validator("remedies", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return (
            "off" if value is False or value == "off" else ({} if value is True else value)
        )  # YAML reads off as false


class ValidateConfig(StrictModel):
    max_drift: float = Field(
        0.01,
        ge=0,
        allow_inf_nan=False,
        description="largest allowed drift in the metric's own units (reference − artifact for higher-is-better "
        "metrics: 0.01 is one point of top1, 0.01 of cosine; artifact − reference for mse)",
    )
    min_int8_coverage: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail an int8/dynamic artifact that runs less than this share of its MACs (or weights) in int8",
    )
    latency_runs: int = Field(20, ge=1, le=10_000, description="batch-1 runs timed per artifact (median reported)")
    min_npu_ops: float | None = Field(
        None,
        ge=0,
        le=1,
        description="fail an artifact whose NPU compiler (Vela, targets.tflite.npu) places less than this share of "
        "its ops on the NPU, for any accelerator named",
    )
    latency_gate: Literal["off", "warn", "fail"] = Field(
        "warn", description="int8/dynamic artifact not faster than fp32 on the same runtime: log it, or fail its gate"
    )


class BuildSettings(StrictModel):
    max_memory: int | None = Field(
        None,
        description="memory a stage may hold for samples' activations and statistics at once, e.g. 8GB or 512MiB; "
        "batches are sized to fit and a stage that cannot fit one sample makes its artifact's gate 'error' "
        "(default: half of the memory available when the build starts; pipeline/core/memory.py)",
    )

    @field_validator("max_memory", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        from deployc.core.memory import parse_size

        return None if value is None else parse_size(value)


class BuildConfig(StrictModel):
    name: str = Field(
        "model",
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$",
        max_length=100,
        description="names the artifact files: letters, digits, '_', '-', '.', not starting with '.' or '-'",
    )
    model: ModelConfig
    data: DataConfig = Field(default_factory=DataConfig)
    passes: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    targets: dict[str, dict[str, Any] | None] = Field(default_factory=lambda: {"onnx": {}})
    quantize: QuantizeSpec = Field(default_factory=QuantizeSpec)
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    build: BuildSettings = Field(default_factory=BuildSettings)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True, description="paths resolve against this")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("passes")
    @classmethod
    def _one_key_each(cls, passes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, entry in enumerate(passes):
            if len(entry) != 1:
                raise ValueError(f"passes[{i}] must be one {{pass-name: {{options}}}} mapping, got keys {list(entry)}")
        return passes

    @field_validator("targets")
    @classmethod
    def _some_target(cls, targets: dict[str, Any]) -> dict[str, Any]:
        if not targets:
            raise ValueError("no targets: a build must produce at least one artifact (e.g. targets: {onnx: {}})")
        return targets

    def resolve(self, path: str | Path) -> Path:
        """A path from the config, relative to the config file's folder."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)


def config_digest(config: BuildConfig) -> str:
    """sha256 of the resolved config exactly as manifest.json records it (canonical JSON, no base_dir): every
    artifact carries it in its metadata, so an artifact names the build config it came from. It is not the
    manifest's digest, which cannot sit inside the artifacts the manifest hashes."""
    dumped = config.model_dump(mode="json", by_alias=True, exclude={"base_dir"})
    return hashlib.sha256(json.dumps(dumped, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_labels(config: BuildConfig) -> list[str] | None:
    """model.labels as a list: given inline, or read from a UTF-8 file with one label per line (bounded, checked)."""
    labels = config.model.labels
    if labels is None or isinstance(labels, list):
        return labels
    path = config.resolve(labels)
    data = read_bytes(path, "model.labels", MAX_LABELS_BYTES, "labels file")
    try:
        lines = data.decode("utf-8").removeprefix("\ufeff").splitlines()
    except UnicodeDecodeError as exc:
        raise UsageError(f"model.labels: '{path}' is not UTF-8 text (offset {exc.start})") from None
    if lines and not lines[-1].strip():
        lines = lines[:-1]
    empty = next((i for i, line in enumerate(lines) if not line.strip()), None)
    if not lines or empty is not None:
        raise UsageError(f"model.labels: '{path}' " + (f"line {empty + 1} is empty" if lines else "holds no label"))
    if len(lines) > MAX_LABELS:
        raise UsageError(f"model.labels: '{path}' holds {len(lines)} labels; at most {MAX_LABELS}")
    return [line.strip() for line in lines]


def check_labels(labels: list[str] | None, shapes: list[tuple[int, ...]], names: list[str]) -> None:
    """The labels name the classes of some output: one of its non-batch dimensions has as many entries."""
    if labels is None or any(len(labels) in tuple(s)[1:] for s in shapes):
        return
    shown = ", ".join(f"{n} [{', '.join(['batch', *map(str, s[1:])])}]" for n, s in zip(names, shapes))
    raise UsageError(f"model.labels: {len(labels)} labels, but no output has {len(labels)} classes ({shown})")


def metric_label(name: str) -> str:
    """'top1', or a custom metric's callable name without its file path: 'metrics.py:vad_accuracy' reads
    'vad_accuracy' in gate reasons, junit and plots (the full string stays in the manifest's config)."""
    return name.rsplit(":", 1)[-1]


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


MAX_CONFIG_BYTES = 1 << 20
MAX_CONFIG_DEPTH = 32
MAX_CONFIG_NODES = 100_000  # after alias expansion: a "billion laughs" config is refused, not expanded


class _StrictLoader(yaml.SafeLoader):
    """YAML where a duplicate key is an error: with the plain loader the later one silently wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
                seen[key] = key_node.start_mark.line + 1
            except TypeError:
                continue  # an unhashable key: the constructor below reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {first})", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _check_size(root: yaml.Node, where: str) -> None:
    """Bound nesting and the size after alias expansion, counting each shared node once per use."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise UsageError(f"{where}: nested deeper than {MAX_CONFIG_DEPTH} levels; not a deployc config")
        children = (
            [c for pair in node.value for c in pair]
            if isinstance(node, yaml.MappingNode)
            else (list(node.value) if isinstance(node, yaml.SequenceNode) else [])
        )
        if done:
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[id(node)] > MAX_CONFIG_NODES:
                raise UsageError(
                    f"{where}: expands to more than {MAX_CONFIG_NODES} values (YAML aliases); not a deployc config"
                )
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def parse_yaml(path: Path, key: str = "config", what: str = "config file") -> Any:
    """A config (or sweep) file's data; every way the file can be unreadable is a UsageError naming it. Read through
    the I/O boundary: a regular file only, its size checked against MAX_CONFIG_BYTES before a byte is read; then
    strict YAML (no duplicate keys, no tags that run code, bounded nesting and alias expansion)."""
    data = read_bytes(path, key, MAX_CONFIG_BYTES, what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_size(node, str(path))
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        line = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise UsageError(f"{path}: not valid YAML{line}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise UsageError(f"{path}: nested too deeply to parse; not a deployc config") from None
    finally:
        loader.dispose()


def load_config(source: str | Path | dict[str, Any] | BuildConfig, base_dir: Path | None = None) -> BuildConfig:
    """A BuildConfig from a YAML/JSON file path, a dict, or an existing BuildConfig."""
    if isinstance(source, BuildConfig):
        return source
    where = "config"
    if isinstance(source, (str, Path)):
        path = Path(source)
        where = str(path)
        if path.is_dir():
            raise UsageError(f"{path}: is a folder, not a config file")
        raw = parse_yaml(path)
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

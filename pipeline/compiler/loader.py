"""Load the model a config names into the first ModelState: factory (+weights), .pt2, or .onnx."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from deployc.core.config import BuildConfig
from deployc.core.ort import session
from deployc.core.pyimport import import_callable
from deployc.core.state import ModelState, TensorSpec, onnx_dtype_name
from deployc.errors import UsageError, first_line
from deployc.storage.arrays import check_safetensors
from deployc.storage.files import regular_file

MAX_PROTOBUF_BYTES = 2 << 30  # an ONNX file past this cannot be a protobuf; bigger weights live in external data


def initial_facts(config: BuildConfig) -> frozenset[str]:
    """Facts known from the config alone, so the pipeline can be checked before anything loads."""
    m = config.model
    facts = {"onnx"} if m.onnx is not None else {"torch"}
    from deployc.data.sources import calibration_source, train_source

    if config.data.validation is not None:
        facts.add("data.validation")
    if train_source(config) is not None:
        facts.add("data.train")
    if calibration_source(config) is not None:
        facts.add("data.calibration")
    return frozenset(facts)


def _specs_from_config(config: BuildConfig) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(i.name, i.resolved_shape(), i.dtype) for i in config.model.inputs)


def _check_finite(state_dict: dict[str, Any], where: str) -> None:
    """NaN in a weight is corruption; ±inf is not (a -inf mask or clamp bound is a valid constant)."""
    import torch

    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and torch.isnan(tensor).any():
            raise UsageError(f"{where}: parameter '{name}' contains NaN")


def _read_weights(path: Path, allow_pickle: bool) -> Any:
    import torch

    regular_file(path, "model.weights")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        check_safetensors(path, "model.weights")  # declared sizes checked before the library maps the file
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UsageError(f"model.weights: '{path}' is not a readable safetensors file ({exc})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not allow_pickle:
            raise UsageError(
                f"model.weights: '{path}' holds pickled Python objects, which can run code when loaded; "
                f"refused. Save a state_dict or safetensors, or set model.allow_pickle: true if you trust it "
                f"({str(exc).splitlines()[0]})"
            ) from None
    except Exception as exc:
        raise UsageError(
            f"model.weights: cannot read '{path}' ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)  # opted in via allow_pickle
    except Exception as exc:
        raise UsageError(f"model.weights: cannot read '{path}' ({type(exc).__name__}: {exc})") from None


WRAPPER_KEYS = ("state_dict", "model_state_dict", "model_state", "model", "net", "module", "weights", "params")


def _tensor_dict(value: Any) -> bool:
    import torch

    return isinstance(value, dict) and bool(value) and all(isinstance(v, torch.Tensor) for v in value.values())


def _unwrap_checkpoint(weights: dict, own: set[str], path: Path, log: Any) -> dict:
    """The state_dict inside a training checkpoint ({step, model_state, optimizer_state}...) when exactly one
    nested dict of tensors fits the module; a DataParallel 'module.' prefix is dropped the same way."""
    if set(weights) == own:
        return weights
    candidates = {k: v for k, v in weights.items() if _tensor_dict(v)}
    if _tensor_dict(weights):
        candidates[""] = weights

    def fitted(sd: dict) -> dict | None:
        if set(sd) == own:
            return sd
        stripped = {k.removeprefix("module."): v for k, v in sd.items()}
        return stripped if set(stripped) == own else None

    fits = {k: f for k, v in candidates.items() if (f := fitted(v)) is not None}
    if len(fits) == 1:
        key, sd = next(iter(fits.items()))
        log(
            f"model.weights: '{path}' "
            + (f"is a checkpoint; using the state_dict under key '{key}'" if key else "drops the 'module.' prefix")
        )
        return sd
    if len(fits) > 1:
        raise UsageError(f"model.weights: '{path}' holds several state_dicts that fit the model: {sorted(fits)}")
    nested = [k for k in candidates if k]
    if nested or any(k in weights for k in WRAPPER_KEYS):
        found = ", ".join(f"'{k}' ({type(v).__name__})" for k, v in list(weights.items())[:8])
        raise UsageError(
            f"model.weights: '{path}' is a checkpoint with keys {found}; none of its nested dicts of tensors "
            f"({', '.join(repr(k) for k in nested) or 'none'}) fits the model's {len(own)} parameters and buffers"
        )
    return weights


def _apply_weights(module: Any, weights: Any, path: Path, log: Any) -> None:
    import torch

    if not isinstance(weights, dict):
        raise UsageError(f"model.weights: '{path}' holds a {type(weights).__name__}, not a state_dict")
    own = module.state_dict()
    weights = _unwrap_checkpoint(weights, set(own), path, log)
    for k, v in weights.items():
        if not isinstance(v, torch.Tensor):
            raise UsageError(f"model.weights: '{path}' entry '{k}' holds a {type(v).__name__}, not a tensor")
        if v.layout != torch.strided:
            raise UsageError(
                f"model.weights: '{path}' entry '{k}' is a {v.layout} tensor; save dense weights (tensor.to_dense())"
            )
    _check_finite(weights, f"model.weights '{path}'")
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise UsageError(
            f"model.weights: '{path}' does not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in weights.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise UsageError(
                f"model.weights: '{path}' layer '{k}' has shape {list(v.shape)}, the model expects {list(own[k].shape)}"
            )
        if v.dtype != own[k].dtype and not (v.is_floating_point() and own[k].is_floating_point()):
            raise UsageError(f"model.weights: '{path}' entry '{k}' is {v.dtype}, the model holds {own[k].dtype}")
    module.load_state_dict(weights, strict=True)


def _load_torch_module(config: BuildConfig, log: Any) -> Any:
    import torch

    m = config.model
    module = None
    if m.factory:
        fn = import_callable(m.factory, config.base_dir, "model.factory")
        try:
            module = fn()
        except UsageError:
            raise
        except SystemExit as exc:  # argparse or sys.exit inside the user's factory
            raise UsageError(
                f"model.factory: '{m.factory}' called sys.exit({exc.code}) instead of returning a module"
            ) from None
        except Exception as exc:
            raise UsageError(f"model.factory: '{m.factory}' raised {type(exc).__name__}: {exc}") from exc
        if not isinstance(module, torch.nn.Module):
            raise UsageError(f"model.factory: '{m.factory}' returned {type(module).__name__}, not a torch.nn.Module")
    if m.weights is not None:
        path = config.resolve(m.weights)
        weights = _read_weights(path, m.allow_pickle)
        if isinstance(weights, torch.nn.Module):
            if module is not None:
                weights = weights.state_dict()
            else:
                module = weights
                weights = None
        if weights is not None:
            if module is None:
                raise UsageError(f"model.weights: '{path}' is a state_dict; give model.factory to build the module")
            _apply_weights(module, weights, path, log)
    _check_finite(module.state_dict(), "model")
    return module.eval()


def _load_exported(config: BuildConfig) -> tuple[Any, tuple[TensorSpec, ...]]:
    import torch

    path = config.resolve(config.model.exported)
    regular_file(path, "model.exported")
    try:
        ep = torch.export.load(str(path))
    except Exception as exc:
        raise UsageError(
            f"model.exported: '{path}' is not a readable torch.export .pt2 file "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    names = [s.arg.name for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    specs: tuple[TensorSpec, ...] = ()
    example = getattr(ep, "example_inputs", None)
    if example:
        args = example[0]
        specs = tuple(
            TensorSpec(n, ("batch",) + tuple(a.shape[1:]), str(a.dtype).removeprefix("torch."))
            for n, a in zip(names, args)
        )
    module = ep.module()
    _check_finite(module.state_dict(), f"model.exported '{path}'")
    return module, specs


def _load_onnx(config: BuildConfig) -> tuple[Any, tuple[TensorSpec, ...]]:
    import onnx

    path = config.resolve(config.model.onnx)
    regular_file(path, "model.onnx", "ONNX model", max_bytes=MAX_PROTOBUF_BYTES)
    try:
        proto = onnx.load(str(path), load_external_data=False)
        _load_external_data_safely(proto, path)
        onnx.checker.check_model(proto, full_check=False)
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(
            f"model.onnx: '{path}' is not a valid ONNX model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    init_names = {i.name for i in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in init_names:
            continue
        t = vi.type.tensor_type
        dims = tuple(_onnx_dim(d, i) for i, d in enumerate(t.shape.dim))
        specs.append(TensorSpec(vi.name, dims, onnx_dtype_name(t.elem_type)))
    from deployc.core.numerics import check_onnx_no_nan

    check_onnx_no_nan(proto, f"model.onnx '{path}'")
    try:  # onnxruntime must load it: unknown op domains and type errors the checker lets through fail here
        session(proto)
    except Exception as exc:
        raise UsageError(f"model.onnx: onnxruntime cannot load '{path}': {first_line(exc)}") from None
    return proto, tuple(specs)


def _match_onnx_inputs(declared: tuple[TensorSpec, ...], found: tuple[TensorSpec, ...], path: Path) -> None:
    """model.inputs, when given for an ONNX model, must name its inputs with compatible shapes and dtypes."""
    if not declared:
        return
    graph = {s.name: s for s in found}
    if set(graph) != {s.name for s in declared}:
        raise UsageError(
            f"model.inputs: {sorted(s.name for s in declared)} do not match the inputs of '{path}': {sorted(graph)}"
        )
    for s in declared:
        g = graph[s.name]
        fixed_clash = len(g.shape) != len(s.shape) or any(
            isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(s.shape, g.shape)
        )
        if fixed_clash:
            raise UsageError(
                f"model.inputs: '{s.name}' is declared {list(s.shape)}, the ONNX graph has {list(g.shape)}"
            )
        if s.dtype != g.dtype:
            raise UsageError(f"model.inputs: '{s.name}' is declared {s.dtype}, the ONNX graph takes {g.dtype}")


def _onnx_dim(dim: Any, axis: int) -> int | str:
    """A fixed size, or a dynamic axis name; unnamed dynamic axes (no param, '?', or paddle's -1) get one from their
    position, 'batch' for axis 0."""
    if dim.HasField("dim_value") and dim.dim_value > 0:
        return dim.dim_value
    if dim.dim_param and dim.dim_param != "?":
        return dim.dim_param
    return "batch" if axis == 0 else f"dim_{axis}"


def _load_external_data_safely(proto: Any, path: Path) -> None:
    """Load external tensor data only from files inside the model's own folder."""
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    base = path.resolve().parent
    tensors = [t for t in proto.graph.initializer if uses_external_data(t)]
    for t in tensors:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise UsageError(
                f"model.onnx: '{path}' initializer '{t.name}' points at external data "
                f"'{location}' outside the model's folder; refused"
            )
        if not target.exists():
            raise UsageError(
                f"model.onnx: '{path}' initializer '{t.name}' needs external data file '{location}', which is missing"
            )
        regular_file(target, f"model.onnx: initializer '{t.name}' external data")  # never a FIFO, device or /proc
    if tensors:
        load_external_data_for_model(proto, str(base))


def load_model(config: BuildConfig, log: Any = None) -> ModelState:
    """The first ModelState of a build; every error names the config key and file at fault. `log` gets notes
    (e.g. which checkpoint key held the state_dict)."""
    log = log or (lambda message: None)
    import torch

    torch.manual_seed(0)
    specs = _specs_from_config(config)
    m = config.model
    if m.onnx is not None:
        proto, found = _load_onnx(config)
        _match_onnx_inputs(specs, found, config.resolve(m.onnx))
        return ModelState(onnx=proto, inputs=specs or found, facts=frozenset({"onnx"}))
    if m.exported is not None:
        module, found = _load_exported(config)
        specs = specs or found
    else:
        module = _load_torch_module(config, log)
    if not specs:
        raise UsageError("model.inputs: give the input specs ([{name, shape, dtype}]) of a torch model")
    _smoke_run(module, specs)
    return ModelState(module=module, inputs=specs, facts=frozenset({"torch"}))


def _smoke_run(module: Any, specs: tuple[TensorSpec, ...]) -> None:
    """Run the model once on zeros so a wrong input spec fails here, naming the inputs, not mid-export."""
    import torch

    args = [torch.from_numpy(np.zeros(s.concrete_shape(2), dtype=s.dtype)) for s in specs]
    try:
        with torch.no_grad():
            module(*args)
    except Exception as exc:
        shown = ", ".join(f"{s.name}{list(s.shape)}:{s.dtype}" for s in specs)
        raise UsageError(
            f"model.inputs: the model does not accept inputs {shown}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None

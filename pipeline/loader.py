"""Load the model a config names into the first ModelState: factory (+weights), .pt2, or .onnx."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from deployc.config import BuildConfig
from deployc.errors import UsageError
from deployc.pyimport import import_callable
from deployc.state import ModelState, TensorSpec

_ONNX_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}


def initial_facts(config: BuildConfig) -> frozenset[str]:
    """Facts known from the config alone, so the pipeline can be checked before anything loads."""
    m = config.model
    facts = {"onnx"} if m.onnx is not None else {"torch"}
    from deployc.data import calibration_source, train_source

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
    import torch

    for name, tensor in state_dict.items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UsageError(f"{where}: parameter '{name}' contains NaN or Inf")


def _read_weights(path: Path, allow_pickle: bool) -> Any:
    import torch

    if not path.is_file():
        raise UsageError(f"model.weights: file '{path}' not found")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

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


def _apply_weights(module: Any, weights: Any, path: Path) -> None:
    import torch

    if isinstance(weights, dict) and "state_dict" in weights and isinstance(weights["state_dict"], dict):
        weights = weights["state_dict"]
    if not isinstance(weights, dict):
        raise UsageError(f"model.weights: '{path}' holds a {type(weights).__name__}, not a state_dict")
    _check_finite(weights, f"model.weights '{path}'")
    own = module.state_dict()
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    if missing or unexpected:
        raise UsageError(
            f"model.weights: '{path}' does not fit the model: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for k, v in weights.items():
        if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(own[k].shape):
            raise UsageError(
                f"model.weights: '{path}' layer '{k}' has shape {list(v.shape)}, the model expects {list(own[k].shape)}"
            )
    module.load_state_dict(weights, strict=True)


def _load_torch_module(config: BuildConfig) -> Any:
    import torch

    m = config.model
    module = None
    if m.factory:
        fn = import_callable(m.factory, config.base_dir, "model.factory")
        try:
            module = fn()
        except UsageError:
            raise
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
            _apply_weights(module, weights, path)
    _check_finite(module.state_dict(), "model")
    return module.eval()


def _load_exported(config: BuildConfig) -> tuple[Any, tuple[TensorSpec, ...]]:
    import torch

    path = config.resolve(config.model.exported)
    if not path.is_file():
        raise UsageError(f"model.exported: file '{path}' not found")
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
    if not path.is_file():
        raise UsageError(f"model.onnx: file '{path}' not found")
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
        dims = tuple(d.dim_param or (d.dim_value if d.HasField("dim_value") else "dim") for d in t.shape.dim)
        specs.append(TensorSpec(vi.name, dims, _ONNX_DTYPES.get(t.elem_type, "float32")))
    from deployc.numerics import check_onnx_finite

    check_onnx_finite(proto, f"model.onnx '{path}'")
    return proto, tuple(specs)


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
        if not target.is_file():
            raise UsageError(
                f"model.onnx: '{path}' initializer '{t.name}' needs external data file '{location}', which is missing"
            )
    if tensors:
        load_external_data_for_model(proto, str(base))


def load_model(config: BuildConfig) -> ModelState:
    """The first ModelState of a build; every error names the config key and file at fault."""
    import torch

    torch.manual_seed(0)
    specs = _specs_from_config(config)
    m = config.model
    if m.onnx is not None:
        proto, found = _load_onnx(config)
        return ModelState(onnx=proto, inputs=specs or found, facts=frozenset({"onnx"}))
    if m.exported is not None:
        module, found = _load_exported(config)
        specs = specs or found
    else:
        module = _load_torch_module(config)
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

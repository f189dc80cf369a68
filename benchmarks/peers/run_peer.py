"""Quantize one ONNX model to int8 with one peer tool, run inside that tool's own venv.

    python run_peer.py --tool {ort,modelopt,olive,inc,nncf} --onnx IN.onnx --calib CALIB.npz --out OUT.onnx
                       [--samples N] [--option KEY=JSON ...]

CALIB.npz holds one array per model input name, samples first. Each peer runs with its library
defaults; --option overrides one keyword of the peer's own API (value parsed as JSON, else a string).
Prints one JSON line on stdout (the tools' own chatter goes to stderr); exit 1 when the tool fails.
Imports: standard library, numpy, onnx and the one peer.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import onnx


class NpzReader:
    """Calibration reader with the protocol ORT, Model Optimizer and INC share: one sample per get_next."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays
        self.n = len(next(iter(arrays.values())))
        self.start, self.end, self.i = 0, self.n, 0

    def get_next(self):
        if self.i >= self.end:
            return None
        self.i += 1
        return {k: v[self.i - 1 : self.i] for k, v in self.arrays.items()}

    def rewind(self):
        self.i = self.start

    def set_range(self, start_index: int, end_index: int):  # used by ORT's CalibStridedMinMax
        self.start, self.end, self.i = start_index, min(end_index, self.n), start_index

    def __len__(self):
        return self.n


def _defaults(fn, keys) -> dict:
    # The library's own defaults, read from its signature so the report cannot drift from the code.
    params = inspect.signature(fn).parameters
    return {k: params[k].default for k in keys if k in params}


def _plain(value):
    # Enums (QuantType.QInt8, CalibrationMethod.MinMax) print as their names.
    return value.name if hasattr(value, "name") and not isinstance(value, type) else value


def _ort_enums(options: dict) -> dict:
    """onnxruntime-style keywords given by name on the command line ("QUInt8") as the enums it takes."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    enums = {
        "calibrate_method": CalibrationMethod,
        "quant_format": QuantFormat,
        "activation_type": QuantType,
        "weight_type": QuantType,
    }
    return {k: enums[k][v] if k in enums and isinstance(v, str) else v for k, v in options.items()}


def _model_dtype(a: np.ndarray) -> np.ndarray:
    return a if np.issubdtype(a.dtype, np.integer) else np.asarray(a, np.float32)


def quantize_ort(model: Path, arrays: dict, out: Path, options: dict) -> dict:
    from onnxruntime.quantization import CalibrationMethod, quantize_static
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    keys = [
        "quant_format",
        "per_channel",
        "reduce_range",
        "activation_type",
        "weight_type",
        "calibrate_method",
        "extra_options",
    ]
    used = {**_defaults(quantize_static, keys), **options}
    kwargs = _ort_enums(options)
    # quantize_static forwards no num_bins/num_quantized_bins to the calibrator, so histogram settings
    # need create_calibrator directly; its ranges reach quantize_static as a calibration cache.
    calibrator_options = kwargs.pop("calibrator_options", None)
    with tempfile.TemporaryDirectory() as tmp:
        if calibrator_options:
            calibrator = create_calibrator(
                model,
                augmented_model_path=f"{tmp}/augmented.onnx",
                calibrate_method=kwargs.get("calibrate_method", CalibrationMethod.MinMax),
                extra_options=calibrator_options,
            )
            calibrator.collect_data(NpzReader(arrays))
            save_tensors_data(calibrator.compute_data(), f"{tmp}/ranges.json")
            kwargs["calibration_cache_path"] = f"{tmp}/ranges.json"
            quantize_static(str(model), str(out), None, **kwargs)
        else:
            quantize_static(str(model), str(out), NpzReader(arrays), **kwargs)
    return used


def quantize_modelopt(model: Path, arrays: dict, out: Path, options: dict) -> dict:
    from modelopt.onnx.quantization import quantize

    keys = [
        "quantize_mode",
        "calibration_method",
        "calibration_eps",
        "high_precision_dtype",
        "simplify",
        "passes",
        "direct_io_types",
        "opset",
    ]
    used = {**_defaults(quantize, keys), **options}
    if used["calibration_method"] is None:
        used["calibration_method"] = "entropy (None -> int8 default)"
    # Model Optimizer always quantizes weights per channel with symmetric int8 (TensorRT's rule).
    used["fixed"] = "per_channel=True, symmetric activations and weights (TensorRT explicit quantization)"
    # calibration_data is what its CLI's --calibration_data .npz feeds; split along the model's batch dim.
    kwargs = {"calibration_data": arrays, "output_path": str(out), **options}
    quantize(str(model), **kwargs)
    return used


def quantize_olive(model: Path, arrays: dict, out: Path, options: dict) -> dict:
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")  # no network here; its exporter would only retry
    from olive.passes.onnx.quantization import _onnx_quantization_config, _static_optional_config
    from olive.workflows import run

    used = {
        k: p.default_value
        for k, p in {**_onnx_quantization_config, **_static_optional_config}.items()
        if k
        in (
            "precision",
            "per_channel",
            "reduce_range",
            "quant_preprocess",
            "activation_symmetric",
            "weight_symmetric",
            "calibrate_method",
            "quant_format",
            "activation_type",
            "prepare_qdq_config",
        )
    }
    used.update(options)
    with tempfile.TemporaryDirectory() as tmp:
        # Olive's RawDataContainer reads one raw float32 file per sample and input: <dir>/<input>/<i>.bin
        for name, array in arrays.items():
            (Path(tmp) / "data" / name).mkdir(parents=True)
            for i, sample in enumerate(array):
                np.ascontiguousarray(sample[None], np.float32).tofile(Path(tmp) / "data" / name / f"{i:06d}.bin")
        config = {
            "input_model": {"type": "ONNXModel", "model_path": str(model)},
            "data_configs": [
                {
                    "name": "calib",
                    "type": "RawDataContainer",
                    "load_dataset_config": {
                        "data_dir": f"{tmp}/data",
                        "input_names": list(arrays),
                        "input_shapes": [[1, *a.shape[1:]] for a in arrays.values()],
                    },
                }
            ],
            "passes": {"quantize": {"type": "OnnxStaticQuantization", "data_config": "calib", **options}},
            "output_dir": f"{tmp}/out",
            "cache_dir": f"{tmp}/cache",
            "log_severity_level": 2,
        }
        result = run(config)
        best = result.get_best_candidate() if result is not None else None
        if best is None or not best.model_path:
            raise RuntimeError("Olive produced no output model (see its log on stderr)")
        # Olive saves weights as external data; load them and write one self-contained file.
        onnx.save(onnx.load(best.model_path), str(out))
    return used


def quantize_inc(model: Path, arrays: dict, out: Path, options: dict) -> dict:
    from onnx_neural_compressor.data_reader import CalibrationDataReader
    from onnx_neural_compressor.quantization import config, quantize

    class Reader(NpzReader, CalibrationDataReader):  # INC asserts isinstance of its own reader ABC
        pass

    keys = [
        "quant_format",
        "activation_type",
        "weight_type",
        "per_channel",
        "reduce_range",
        "calibrate_method",
        "calibration_sampling_size",
    ]
    used = {**_defaults(config.StaticQuantConfig.__init__, keys), **options}
    quant_config = config.StaticQuantConfig(calibration_data_reader=Reader(arrays), **_ort_enums(options))
    quantize(str(model), str(out), quant_config)
    return used


def quantize_nncf(model: Path, arrays: dict, out: Path, options: dict) -> dict:
    """NNCF on OpenVINO, as its users run it: nncf.quantize(ov.convert_model(onnx), nncf.Dataset(samples)). OUT is
    an OpenVINO IR (.xml + .bin): the model NNCF hands over runs on OpenVINO only. Options: preset (PERFORMANCE,
    MIXED), ignored_scope ({"names"|"patterns"|"types": [...]}, matched against the OpenVINO model), and any other
    keyword of nncf.quantize."""
    import re

    import nncf
    import openvino as ov

    used = {**_defaults(nncf.quantize, ["preset", "target_device", "subset_size", "fast_bias_correction"])}
    used.update(options)
    kwargs = dict(options)
    if "preset" in kwargs:
        kwargs["preset"] = nncf.QuantizationPreset[kwargs["preset"]]
    scope = kwargs.pop("ignored_scope", None)
    ov_model = ov.convert_model(str(model))
    if scope:
        names = [op.get_friendly_name() for op in ov_model.get_ops()]
        kwargs["ignored_scope"] = nncf.IgnoredScope(**scope, validate=False)
        used["ignored_scope_matched"] = sum(any(re.fullmatch(p, n) for p in scope.get("patterns", [])) for n in names)
    samples = [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(len(next(iter(arrays.values()))))]
    quantized = nncf.quantize(ov_model, nncf.Dataset(samples), **kwargs)
    ov.save_model(quantized, str(out), compress_to_fp16=False)
    return used


TOOLS = {
    "ort": (quantize_ort, "onnxruntime"),
    "modelopt": (quantize_modelopt, "nvidia-modelopt"),
    "olive": (quantize_olive, "olive-ai"),
    "inc": (quantize_inc, "onnx-neural-compressor"),
    "nncf": (quantize_nncf, "nncf"),
}


def op_counts(path: Path) -> dict:
    if path.suffix == ".xml":  # an OpenVINO IR: its int8 points are FakeQuantize ops (one per quantized tensor)
        import openvino as ov

        ops = collections.Counter(op.get_type_name() for op in ov.Core().read_model(str(path)).get_ops())
        fq = ops["FakeQuantize"]
        return {"QuantizeLinear": fq, "DequantizeLinear": fq, "qlinear_ops": 0, "float_ops": 0, "opset": None}
    ops = collections.Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)
    return {
        "QuantizeLinear": ops["QuantizeLinear"],
        "DequantizeLinear": ops["DequantizeLinear"],
        # QOperator-format models (INC's default) carry their int8 math in QLinear*/ConvInteger nodes.
        "qlinear_ops": sum(n for op, n in ops.items() if op.startswith("QLinear") or op.endswith("Integer")),
        "float_ops": sum(n for op, n in ops.items() if op in ("Conv", "MatMul", "Gemm")),
        "opset": next(
            o.version
            for o in onnx.load(str(path), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        ),
    }


def inline_external_data(path: Path) -> None:
    """INC writes weights to a sidecar OUT.onnx_data: fold them back so every peer gives one file."""
    proto = onnx.load(str(path), load_external_data=False)
    sidecars = {
        entry.value
        for t in proto.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for entry in t.external_data
        if entry.key == "location"
    }
    if sidecars:
        onnx.save(onnx.load(str(path)), str(path))
        for name in sidecars:
            (path.parent / name).unlink()


@contextlib.contextmanager
def stdout_to_stderr():
    # The peers print progress (some from C++): keep fd 1 for our single JSON line.
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def parse_option(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tool", choices=sorted(TOOLS), required=True)
    parser.add_argument("--onnx", type=Path, required=True)
    parser.add_argument("--calib", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--samples", type=int, default=None, help="use the first N calibration samples")
    parser.add_argument("--option", action="append", default=[], type=parse_option, metavar="KEY=JSON")
    args = parser.parse_args(argv)

    fn, dist = TOOLS[args.tool]
    report = {
        "tool": args.tool,
        "version": importlib.metadata.version(dist),
        "input": str(args.onnx),
        "output": str(args.out),
    }
    try:
        with np.load(args.calib) as npz:
            # token ids and masks keep their integer type (a BERT's int64 input_ids); everything else is float32
            arrays = {k: _model_dtype(npz[k])[: args.samples] for k in npz.files}
        report["samples"] = len(next(iter(arrays.values())))
        graph = onnx.load(str(args.onnx), load_external_data=False).graph
        inputs = [i.name for i in graph.input if i.name not in {t.name for t in graph.initializer}]
        if sorted(inputs) != sorted(arrays):
            raise ValueError(f"{args.calib} holds {sorted(arrays)}, the model's inputs are {sorted(inputs)}")
        args.out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with stdout_to_stderr():
            used = fn(args.onnx.resolve(), arrays, args.out.resolve(), dict(args.option))
        report["seconds"] = round(time.perf_counter() - start, 2)
        if not args.out.exists():
            raise RuntimeError(f"{args.tool} reported success but wrote no {args.out}")
        if args.out.suffix != ".xml":  # an OpenVINO IR keeps its weights in OUT.bin
            inline_external_data(args.out)
        size = sum(p.stat().st_size for p in (args.out, args.out.with_suffix(".bin")) if p.is_file())
        report.update(
            ok=True,
            bytes=size,
            **op_counts(args.out),
            options={k: _plain(v) for k, v in used.items()},
        )
    except (Exception, SystemExit) as exc:  # a peer rejecting a model is a result to report, not a crash
        where = traceback.extract_tb(exc.__traceback__)[-1]  # a bare assert says nothing but its line
        report.update(
            ok=False, error=f"{type(exc).__name__}: {exc}".strip()[:2000], at=f"{where.filename}:{where.lineno}"
        )
    print(json.dumps(report, default=str))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

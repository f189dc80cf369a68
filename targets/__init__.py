"""One module per deployment target; importing this package registers them (heavy runtimes load lazily)."""

from targets import onnx  # noqa: F401  (registration side effects)
from targets import tensorrt, tflite  # noqa: F401  (registration side effects)

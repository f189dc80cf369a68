"""deployc.core: the vocabulary every part of deployc speaks. The build config schema and its strict YAML loader
(config), the immutable ModelState and TensorSpec that flow between passes (state), 'file.py:callable' resolution
(pyimport), the library versions that go into manifests and cache keys (versions), one onnxruntime session helper
(ort), the one latency measurement (timing), third-party output capture (quiet) and small numeric checks.

May import: deployc.errors and deployc.storage only. Everything else in deployc imports it."""

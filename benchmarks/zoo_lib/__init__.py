"""Support code of the model zoo benchmark (benchmarks/zoo.py): wheels, model definitions, data, metrics, report."""

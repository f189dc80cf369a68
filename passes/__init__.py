"""One module per pass family; importing this package registers every pass by name."""

from passes import export, quantize, simplify  # noqa: F401  (registration side effects)

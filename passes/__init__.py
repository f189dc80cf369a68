"""One module per pass family; importing this package registers every pass by name."""

from passes import export, quantize, simplify  # noqa: F401  (registration side effects)
from passes import finetune, prune, prune_gradual  # noqa: F401  (registration side effects)
from passes import distill  # noqa: F401  (registration side effects)
from passes import qat, quantize_tune  # noqa: F401  (registration side effects)

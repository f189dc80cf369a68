"""deployc.data: what a model is judged on. The samples (dataset: digits, .npz files, data factories in sources),
the contract every array meets against the declared model inputs (contract), the metrics (top1, top5, cosine,
mse, custom callables) and the reference: the outputs and metric of the model as loaded, before any pass.

May import: deployc.core, deployc.storage, deployc.errors. It knows nothing of passes, targets or artifacts."""

"""One module per pass family. Passes are found through the `deployc.passes` entry points (pyproject.toml)."""

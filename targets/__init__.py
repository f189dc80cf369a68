"""One module per deployment target, found through the `deployc.targets` entry points (heavy runtimes load lazily)."""

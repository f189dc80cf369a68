"""deployc.driver: one build end to end (build: check → load → passes → targets → validate → publish) and the
no-op rebuild check that answers before torch is imported (uptodate).

May import: every other sub-package of deployc except the sweep; nothing but the CLI, the Python API, the
commands and the sweep import it."""

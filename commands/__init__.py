"""Commands beside the CLI (bench, explain, demo): found through the `deployc.commands` entry points."""

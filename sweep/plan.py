"""Which variants share a pipeline prefix, so its passes run once for all of them.

A prefix is the first j passes before the first cacheable one (torch-level work: pruning, fine-tuning,
distillation; the ONNX passes after it are shared through the pass cache instead). Two variants share
their first j passes' result when they agree on the model, the data, those passes' options and the config
sections the passes declare they read (Pass.reads_config). The shared prefixes form a tree: the same
pruning for four variants, then two fine-tuning settings for two each, runs the pruning once.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from deployc.compiler.manager import PassManager
from deployc.compiler.pipeline_string import format_pipeline
from deployc.core.config import BuildConfig


@dataclass
class Planned:
    """One variant, checked: its config and pass manager (every pass and target resolved)."""

    variant: Any  # sweep_spec.Variant
    config: BuildConfig
    manager: PassManager
    keys: list[str] = field(default_factory=list)  # keys[j-1]: identity of the result of its first j passes


@dataclass
class PrefixNode:
    key: str
    passes: int  # how many leading passes it runs (from the start, or continuing from its parent)
    config: BuildConfig  # a member variant's config: members agree on everything the prefix reads
    label: str  # the prefix's pipeline string
    parent: str | None = None
    members: list[str] = field(default_factory=list)  # ids of the variants that start from it (directly)


def prefix_keys(config: BuildConfig, manager: PassManager) -> list[str]:
    dumped = config.model_dump(mode="json", by_alias=True)
    common = {"model": dumped["model"], "data": dumped["data"], "base_dir": str(config.base_dir)}
    sections: set[str] = set()
    keys = []
    for j, planned in enumerate(manager.passes):
        if planned.cls.cacheable:
            break
        reads = planned.cls.reads_config
        sections |= (set(dumped) - {"targets", "passes"}) if reads is None else set(reads)
        payload = {
            **common,
            "passes": [(p.cls.name, p.config.model_dump(mode="json")) for p in manager.passes[: j + 1]],
            "sections": {s: dumped.get(s) for s in sorted(sections)},
        }
        keys.append(hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16])
    return keys


def plan_prefixes(batch: list[Planned], known: dict[str, PrefixNode]) -> list[PrefixNode]:
    """New prefix nodes for `batch` (parents first); sets each member list. A prefix is worth a node when two or
    more variants (or other nodes) start from it, or when an earlier batch already has it (`known`)."""
    for p in batch:
        p.keys = prefix_keys(p.config, p.manager)
    count = Counter(k for p in batch for k in p.keys)
    useful = {k for k, c in count.items() if c >= 2} | (set(count) & set(known))
    nodes: dict[str, PrefixNode] = {}
    for p in batch:
        chain = [(j + 1, k) for j, k in enumerate(p.keys) if k in useful]
        for (depth, key), parent in zip(chain, [None] + [k for _, k in chain[:-1]]):
            if key not in known and key not in nodes:
                label = format_pipeline([(q.cls.name, q.options) for q in p.manager.passes[:depth]])
                nodes[key] = PrefixNode(key, depth, p.config, label, parent)
        if chain:
            (known.get(chain[-1][1]) or nodes[chain[-1][1]]).members.append(p.variant.id)
    _splice_single_use(nodes, known)
    return sorted(nodes.values(), key=lambda n: n.passes)


def _splice_single_use(nodes: dict[str, PrefixNode], known: dict[str, PrefixNode]) -> None:
    """Drop new nodes that only one variant or one child node starts from: it may as well run those passes itself."""
    changed = True
    while changed:
        changed = False
        for key, node in list(nodes.items()):
            children = [n for n in nodes.values() if n.parent == key]
            if len(node.members) + len(children) >= 2:
                continue
            for child in children:
                child.parent = node.parent
            if node.members and node.parent is not None:
                (known.get(node.parent) or nodes[node.parent]).members += node.members
            del nodes[key]
            changed = True

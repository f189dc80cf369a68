"""What a sweep found: one entry per variant (status, reason, artifacts with metric, drift, size, latency), the
Pareto front of the passing artifacts over metric, latency and size, and the artifact the objective picks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from deployc.core.config import load_config
from deployc.driver.build import check
from deployc.driver.uptodate import build_key, stale_reason
from deployc.errors import DeploycError, UsageError
from deployc.outputs.report_html import pareto_front
from deployc.storage.files import read_json
from deployc.sweep.plan import Planned
from deployc.sweep.runner import Outcome
from deployc.sweep.spec import ObjectiveConfig, Sweep, Variant

SWEEP_VERSION = 1


def check_variant(sweep: Sweep, variant: Variant) -> Planned:
    """The variant's config and pipeline, checked in milliseconds; errors name the sweep file and the overrides."""
    try:
        config, manager = check(load_config(variant.raw, base_dir=sweep.base_dir))
    except DeploycError as exc:
        shown = ", ".join(f"{k}={json.dumps(v)}" for k, v in variant.overrides.items())
        raise UsageError(f"{sweep.path}: variant {variant.id} ({shown}): {exc}") from None
    return Planned(variant, config, manager)


def verified_build(out: Path, planned: Planned) -> Outcome | None:
    """--resume: the finished build in `out` when `deployc build` would call it up to date (same build key: config,
    input files, code and library versions; every artifact and report matching its recorded hash), else None."""
    try:
        if out.is_symlink() or stale_reason(out, build_key(planned.config)) is not None:
            return None
        manifest = read_json(out / "manifest.json", "manifest")
        timings = read_json(out / "timings.json", "timings") if (out / "timings.json").is_file() else {}
    except (OSError, ValueError, UsageError):  # a damaged or tampered folder is rebuilt (its out-dir rules apply)
        return None
    return Outcome(0 if manifest.get("status") == "passed" else 3, manifest=manifest, timings=timings, resumed=True)


def _artifacts(manifest: dict[str, Any], timings: dict[str, Any]) -> list[dict[str, Any]]:
    perf = timings.get("artifacts", {})
    out = []
    for a in manifest["artifacts"]:
        m, gate = a.get("metrics") or {}, a.get("gate") or {}
        out.append(
            {
                "target": a["target"],
                "precision": a["precision"],
                "metric": m.get("metric"),
                "drift": m.get("drift"),
                "bytes": a.get("bytes"),
                "latency_ms": (perf.get(f"{a['target']}/{a['precision']}") or {}).get("latency_ms_batch1"),
                "gate": gate.get("status"),
                "reason": gate.get("reason"),
                "path": a.get("path"),
            }
        )
    return out


def variant_entry(planned: Planned, outcome: Outcome, prefix_label: str | None) -> dict[str, Any]:
    """sweep.json's record of one variant."""
    manifest = outcome.manifest
    artifacts = _artifacts(manifest, outcome.timings) if manifest else []
    if outcome.error:
        reason = outcome.error
    else:
        bad = [a for a in artifacts if a["gate"] not in ("pass", "skipped")]
        reason = "; ".join(f"{a['target']}/{a['precision']}: {a['gate']}: {a['reason']}" for a in bad) or None
        if manifest is not None and manifest["status"] == "failed" and not artifacts:
            reason = "the build made no artifact"
    return {
        "id": planned.variant.id,
        "overrides": planned.variant.overrides,
        "out": planned.variant.id,
        "status": "passed" if outcome.exit_code == 0 else "failed",
        "reason": reason if outcome.exit_code != 0 else None,
        "exit_code": outcome.exit_code,
        "pipeline": planned.manager.pipeline_string(),
        "shared_prefix": prefix_label,
        "resumed": outcome.resumed,
        "seconds": round(outcome.seconds, 2),
        "artifacts": artifacts,
    }


def _candidates(variants: list[dict[str, Any]], objective: ObjectiveConfig) -> list[dict[str, Any]]:
    out = []
    for v in variants:
        for a in v["artifacts"]:
            if objective.artifact and f"{a['target']}/{a['precision']}" != objective.artifact:
                continue
            ok = v["status"] == "passed" if objective.subject_to == "all_gates" else a["gate"] == "pass"
            if ok and a["gate"] == "pass" and a.get(objective.minimize) is not None:
                out.append({"variant": v["id"], **a})
    return out


def choose(variants: list[dict[str, Any]], objective: ObjectiveConfig) -> dict[str, Any] | None:
    """The artifact with the lowest objective value among those that qualify (ties: smaller, then by name)."""
    found = _candidates(variants, objective)
    key = objective.minimize
    return min(found, key=lambda a: (a[key], a["bytes"] or 0, a["variant"], a["target"], a["precision"]), default=None)


def objective_value(entry: dict[str, Any], objective: ObjectiveConfig) -> float | None:
    """What the search (TPE) minimises for one variant: its best qualifying artifact's value."""
    best = choose([entry], objective)
    return None if best is None else float(best[objective.minimize])


def pareto(variants: list[dict[str, Any]], higher_is_better: bool) -> list[dict[str, Any]]:
    """Passing artifacts no other passing artifact beats on metric, latency and size at once."""
    pts = [
        {"variant": v["id"], **{k: a[k] for k in ("target", "precision", "metric", "drift", "bytes", "latency_ms")}}
        for v in variants
        for a in v["artifacts"]
        if a["gate"] == "pass" and a["metric"] is not None
    ]
    return pareto_front(pts, ("latency_ms", "bytes"), higher_is_better)


def reference_of(outcomes: list[Outcome]) -> dict[str, Any] | None:
    """The reference metric of the model as loaded (every variant has the same one unless `vary` changes data)."""
    ref = next((o.manifest["reference"] for o in outcomes if o.manifest), None)
    return None if ref is None else {k: ref[k] for k in ("metric", "value", "higher_is_better", "source")}


def sweep_summary(
    sweep: Sweep,
    executor: dict[str, Any],
    variants: list[dict[str, Any]],
    prefixes: list[dict[str, Any]],
    reference: dict[str, Any] | None,
    seconds: float,
) -> dict[str, Any]:
    """What sweep.json holds."""
    hib = True if reference is None else bool(reference["higher_is_better"])
    statuses = [v["status"] for v in variants]
    return {
        "sweep_version": SWEEP_VERSION,
        "name": sweep.base_raw.get("name", "model"),
        "sweep": str(sweep.path),
        "base": str(sweep.config.base),
        "search": sweep.config.search.model_dump(mode="json"),
        "objective": sweep.config.objective.model_dump(mode="json"),
        "executor": executor,
        "reference": reference,
        "counts": {
            "variants": len(variants),
            "passed": statuses.count("passed"),
            "failed": statuses.count("failed"),
            "resumed": sum(v["resumed"] for v in variants),
        },
        "wall_seconds": round(seconds, 2),
        "prefixes": prefixes,
        "variants": variants,
        "pareto": pareto(variants, hib),
        "chosen": choose(variants, sweep.config.objective),
    }

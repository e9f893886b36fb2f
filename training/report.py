"""The reports of an evaluation: results.md (x100, one decimal), results.csv and metrics.json (fractions in
0..1, NaN as null), and for a model with SA-MoE each class's routing (a table, routing.csv, routing.png)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from wmoe.render import class_routing_chart

METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1_max",
    "pixel_auroc",
    "pixel_ap",
    "pixel_f1_max",
    "pixel_aupro",
)


def _pct(v: float) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100 * v:.1f}"


def markdown_table(result: dict) -> str:
    """Per-class rows and a mean row, metrics x100 with one decimal; n/a where a class has a single label."""
    head = "| class | images | anomalous | " + " | ".join(METRICS) + " |"
    lines = [head, "|" + "---|" * (3 + len(METRICS))]
    for cls, m in result["per_class"].items():
        c = result["counts"][cls]
        lines.append(
            f"| {cls} | {c['images']} | {c['anomalous']} | " + " | ".join(_pct(m[k]) for k in METRICS) + " |"
        )
    for name, m in (result.get("per_dataset") or {}).items():
        lines.append(
            f"| **{name} (mean)** | | | " + " | ".join(_pct(m.get(k, math.nan)) for k in METRICS) + " |"
        )
    lines.append(
        f"| **mean** | {result['images']} | | "
        + " | ".join(_pct(result["mean"].get(k, math.nan)) for k in METRICS)
        + " |"
    )
    return "\n".join(lines) + "\n"


def csv_text(result: dict) -> str:
    """One row per class and a final "mean" row; metrics as fractions in 0..1 (nan where undefined)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "images", "anomalous", "pixel_annotated", *METRICS])
    for cls, m in result["per_class"].items():
        c = result["counts"][cls]
        w.writerow(
            [cls, c["images"], c["anomalous"], c["pixel_annotated"], *(f"{m[k]:.6f}" for k in METRICS)]
        )
    w.writerow(
        ["mean", result["images"], "", "", *(f"{result['mean'].get(k, math.nan):.6f}" for k in METRICS)]
    )
    return buf.getvalue()


def routing_table(result: dict) -> str:
    """Each class's mean routing weight per expert and its mean routing entropy (nats, and over ln E)."""
    routing = result.get("routing")
    if not routing:
        return "This model has no SA-MoE: there are no routing weights to report.\n"
    experts = len(next(iter(routing.values()))["mean_weights"])
    head = "| class | images | " + " | ".join(f"expert {e + 1}" for e in range(experts))
    lines = [head + " | entropy (nats) | entropy / ln E |", "|---|---:|" + "---:|" * (experts + 2)]
    for cls, r in routing.items():
        weights = " | ".join(f"{w:.3f}" for w in r["mean_weights"])
        lines.append(
            f"| {cls} | {r['images']} | {weights} | {r['entropy']:.3f} | {r['normalized_entropy']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def routing_csv(result: dict) -> str:
    """One row per class: images, mean weight of each expert, entropy (nats) and entropy / ln E."""
    routing = result["routing"]
    experts = len(next(iter(routing.values()))["mean_weights"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        [
            "class",
            "images",
            *(f"weight_expert{e + 1}" for e in range(experts)),
            "entropy",
            "normalized_entropy",
        ]
    )
    for cls, r in routing.items():
        w.writerow(
            [
                cls,
                r["images"],
                *(f"{x:.6f}" for x in r["mean_weights"]),
                f"{r['entropy']:.6f}",
                f"{r['normalized_entropy']:.6f}",
            ]
        )
    return buf.getvalue()


def to_json(obj) -> str:
    """JSON with NaN written as null (strict JSON readers reject NaN)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), indent=2) + "\n"


def write_results(result: dict, out: str | Path, extra: dict | None = None, title: str = "") -> None:
    """results.md, results.csv and metrics.json in `out`; routing.csv and routing.png for a model with SA-MoE."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    note = "Metrics x100, one decimal; n/a = undefined (a class with a single label, or no pixel masks).\n"
    routing = (
        "\n## SA-MoE routing per class\n\nMean routing weight of each expert over the class's images, and the "
        "mean of the images' routing entropies (ln E = uniform routing, 0 = one expert per image).\n\n"
        + routing_table(result)
    )
    (out / "results.md").write_text(
        (f"# {title}\n\n" if title else "") + note + "\n" + markdown_table(result) + routing
    )
    if result.get("routing"):
        (out / "routing.csv").write_text(routing_csv(result))
        chart = {c: (r["mean_weights"], r["normalized_entropy"]) for c, r in result["routing"].items()}
        class_routing_chart(chart).save(out / "routing.png")
    (out / "results.csv").write_text(csv_text(result))
    (out / "metrics.json").write_text(to_json({**result, **(extra or {})}))

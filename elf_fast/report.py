"""Reports of ``python -m elf_fast.evaluate``: Markdown tables, JSONL files and the sweep plots."""

from __future__ import annotations

import json
import os
from pathlib import Path


def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.4e}"
    if isinstance(v, dict):
        return ", ".join(f"{k}={fmt(x)}" for k, x in v.items())
    return str(v).replace("|", "\\|")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report_markdown(report: dict) -> str:
    """Two key | value tables: the metrics, then the settings (the sampler's fields as ``sampler.<name>``)."""
    settings = []
    for k, v in report.items():
        if k == "metrics":
            continue
        settings += [[f"{k}.{kk}", vv] for kk, vv in v.items()] if isinstance(v, dict) else [[k, v]]
    return (f"# elf_fast evaluation ({report['mode']})\n\n## Metrics\n\n"
            + markdown_table(["metric", "value"], [[k, v] for k, v in report["metrics"].items()])
            + "\n## Settings\n\n" + markdown_table(["setting", "value"], settings))


def write_jsonl(path: Path, records: list[dict]) -> None:
    """One JSON line per record, written to a temporary file and renamed over ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def sweep_markdown(rows: list[dict], context: tuple[str, ...] = ()) -> str:
    """The sweep's rows as a table, under a line naming the ``context`` keys they share."""
    cols = ["steps", "sampler", "gamma", "w_sc", "gen_ppl", "entropy", "n_empty", "seconds"]
    ordered = sorted(rows, key=lambda r: (r["sampler"], r["w_sc"], r.get("gamma") or 0.0, r["steps"]))
    ctx = ", ".join(f"{k} {fmt(rows[0].get(k))}" for k in context) if rows else ""
    return f"# elf_fast sweep\n\n{ctx}\n\n" + markdown_table(cols, [[r.get(c) for c in cols] for r in ordered])


def _group_label(r: dict, several_gammas: bool) -> str:
    g = f", γ={r['gamma']:g}" if r["sampler"] == "sde" and several_gammas else ""
    return f"{r['sampler'].upper()}{g}, w_sc={r['w_sc']:g}"


def plot_sweep(rows: list[dict], out_dir: Path) -> list[Path]:
    """``frontier.png`` (Gen. PPL vs entropy, a point per setting) and ``ppl_vs_steps.png``.

    Uses matplotlib's Agg canvas directly (no pyplot): no global backend state is touched.
    """
    from elf_fast.extras import require

    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plotting a sweep").FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in rows if r.get("gen_ppl") is not None and r.get("entropy") is not None]
    several_gammas = len({r.get("gamma") for r in rows if r["sampler"] == "sde"}) > 1
    groups: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: (r["sampler"], r["w_sc"], r.get("gamma") or 0.0, r["steps"])):
        groups.setdefault((r["sampler"], r["w_sc"], r.get("gamma")), []).append(r)
    w_values = sorted({r["w_sc"] for r in rows})
    cmaps = {"ode": "Blues", "sde": "Oranges"}
    gammas = sorted({r["gamma"] for r in rows if r.get("gamma") is not None})

    def marker(sampler, g):  # SDE: one triangle orientation per gamma
        return "o" if sampler == "ode" else "^v<>"[gammas.index(g) % 4] if g in gammas else "s"

    def style(sampler, g):
        return "-" if sampler == "ode" or g not in gammas else ("-", "--", "-.", ":")[gammas.index(g) % 4]

    def colour(sampler, w):
        import matplotlib

        shade = 0.45 + 0.5 * (w_values.index(w) / max(len(w_values) - 1, 1))
        return matplotlib.colormaps[cmaps.get(sampler, "Greys")](shade)

    def log_if_wide(ax, values):
        if values and min(values) > 0 and max(values) / min(values) > 10:
            ax.set_yscale("log")

    paths = []

    def finish(fig, ax, xlabel, title, name):
        """Shared tail of both plots: Gen. PPL axis, grid, legend, PNG into out_dir."""
        log_if_wide(ax, [r["gen_ppl"] for r in rows])
        ax.set_xlabel(xlabel)
        ax.set_ylabel("Gen. PPL")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if groups:
            ax.legend(fontsize=8)
        fig.tight_layout()
        FigureCanvasAgg(fig).print_png(str(out_dir / name))
        paths.append(out_dir / name)

    # the paper's frontier: lower-right is better (low Gen. PPL at high entropy)
    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.add_subplot()
    for (sampler, w, g), grp in groups.items():
        c = colour(sampler, w)
        ax.plot([r["entropy"] for r in grp], [r["gen_ppl"] for r in grp], marker=marker(sampler, g),
                color=c, linestyle=":", linewidth=1, label=_group_label(grp[0], several_gammas))
        for r in grp:
            ax.annotate(f"{r['steps']}", (r["entropy"], r["gen_ppl"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=c)
    finish(fig, ax, "unigram entropy (nats)", "Gen. PPL vs entropy (labels: sampling steps)", "frontier.png")

    fig = Figure(figsize=(7, 5), dpi=120)
    ax = fig.add_subplot()
    for (sampler, w, g), grp in groups.items():
        ax.plot([r["steps"] for r in grp], [r["gen_ppl"] for r in grp], marker=marker(sampler, g),
                linestyle=style(sampler, g), color=colour(sampler, w), label=_group_label(grp[0], several_gammas))
    steps = sorted({r["steps"] for r in rows})
    if steps:
        if len(steps) > 1 and steps[0] > 0:
            ax.set_xscale("log", base=2)
        ax.set_xticks(steps, [str(s) for s in steps])
    finish(fig, ax, "sampling steps", "Gen. PPL vs sampling steps", "ppl_vs_steps.png")
    return paths

"""Table and plot for docs/distill_study.md from the evaluation reports.

    python docs/distill_study/plot.py            # reads docs/distill_study/eval/<model>/steps<k>/report.json
                                                 # writes docs/distill_study/table.md, ppl_vs_steps.png
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
# the optimiser steps behind each model, from the teacher: round 2 starts from round 1's student, so it
# has 100; the control had 50 (matched to round 1, not to round 2: docs/distill_study.md, Corrections)
MODELS = [("teacher", "teacher (built-in ELF-XS)"),
          ("round1_8steps", "round-1 student (8-step; 50 steps)"),
          ("round2_4steps", "round-2 student (4-step; 50 + 50 steps)"),
          ("control", "control (50 steps: matches round 1 only)")]
STEPS = [1, 2, 4, 8, 16]


def load(model, k):
    p = HERE / "eval" / model / f"steps{k}" / "report.json"
    if not p.exists():
        return None
    return json.loads(p.read_text())["metrics"]


def main():
    rows = ["| model | " + " | ".join(f"{k} step{'s' if k > 1 else ''}" for k in STEPS) + " |",
            "|---|" + "---:|" * len(STEPS)]
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in MODELS:
        cells, xs, ys = [], [], []
        for k in STEPS:
            m = load(key, k)
            if m is None:
                cells.append("not run")
                continue
            cells.append(f"{m['gen_ppl']:.1f} / {m['entropy']:.2f} / {m['n_empty']}")
            xs.append(k)
            ys.append(m["gen_ppl"])
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
        if xs:
            ax.plot(xs, ys, marker="o", label=label, ls=":" if key == "control" else "-")
    t32 = load("teacher", 32)
    if t32 is not None:
        ax.axhline(t32["gen_ppl"], color="gray", ls="--", lw=1, label=f"teacher at 32 steps ({t32['gen_ppl']:.0f})")
    ax.set_xscale("log", base=2)
    ax.set_xticks(STEPS)
    ax.set_xticklabels([str(k) for k in STEPS])
    ax.set_xlabel("sampling steps (ODE, uniform grid, w_sc 2.5: not the students' recommended sampler)", fontsize=8)
    ax.set_ylabel("Gen. PPL (2-layer Debian judge)")
    ax.set_yscale("log")
    ax.set_title("Progressive distillation of the built-in ELF-XS")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(HERE / "ppl_vs_steps.png", dpi=110)
    table = "\n".join(rows) + "\n\nCells: Gen. PPL / entropy (nats) / empty samples, 64 samples of 64 tokens, seed 0.\n"
    (HERE / "table.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()

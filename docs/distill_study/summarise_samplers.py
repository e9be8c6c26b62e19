"""Table of docs/distill_study.md's "Sampler on text" from compare_samplers.sh's reports.

    python docs/distill_study/summarise_samplers.py   # reads eval_samplers/<model>/steps<k>_<sampler>_seed<s>/report.json
                                                     # writes eval_samplers/table.md
"""
import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent / "eval_samplers"
# (folder, label, step count): the optimiser steps behind each model, from the teacher
CELLS = [("teacher", "teacher (ELF-XS of ddc750e)", 4),
         ("teacher", "teacher (ELF-XS of ddc750e)", 8),
         ("ln_round1_8steps", "8-step student, t_s logit-normal (50 steps)", 8),
         ("grid_round1_8steps", "8-step student, t_s on the grid (50 steps)", 8),
         ("control50", "control, 50 steps (matches round 1)", 8),
         ("ln_round2_4steps", "4-step student, t_s logit-normal (50 + 50 steps)", 4),
         ("grid_round2_4steps", "4-step student, t_s on the grid (50 + 50 steps)", 4),
         ("control100", "control, 100 steps (matches round 2)", 4),
         ("control100", "control, 100 steps (matches round 2)", 8)]
SAMPLERS = [("ode_uniform", "ODE, uniform grid"), ("sde_ln", "SDE gamma 1.5, logit-normal grid")]
# the crossed pairs: which of the two differences (grid, SDE) does what
CROSSED = [("ode_ln", "ODE, logit-normal grid"), ("sde_uniform", "SDE gamma 1.5, uniform grid")]


def reports(model, k, sampler):
    """{seed: metrics} of one cell."""
    out = {}
    for p in sorted(HERE.glob(f"{model}/steps{k}_{sampler}_seed*/report.json")):
        r = json.loads(p.read_text())
        out[r["seed"]] = r["metrics"]
    return out


def cell(ms):
    if not ms:
        return "not run"
    ppl = [m["gen_ppl"] for m in ms.values()]
    ent = statistics.mean(m["entropy"] for m in ms.values())
    tok = statistics.mean(m["ppl_tokens"] for m in ms.values())
    empty = sum(m["n_empty"] for m in ms.values())
    return f"{statistics.mean(ppl):.1f} ({min(ppl):.0f}-{max(ppl):.0f}) / {ent:.2f} / {tok:.0f} / {empty}"


def main():
    seeds = set()
    rows = ["| model | steps | " + " | ".join(label for _, label in SAMPLERS) + " | seeds where SDE-LN < ODE-uniform |",
            "|---|---:|" + "---:|" * len(SAMPLERS) + "---:|"]
    for model, label, k in CELLS:
        by = {s: reports(model, k, s) for s, _ in SAMPLERS}
        common = sorted(set(by["ode_uniform"]) & set(by["sde_ln"]))
        seeds.update(common)
        wins = sum(by["sde_ln"][s]["gen_ppl"] < by["ode_uniform"][s]["gen_ppl"] for s in common)
        rows.append(f"| {label} | {k} | " + " | ".join(cell(by[s]) for s, _ in SAMPLERS)
                    + f" | {wins} of {len(common)} |")
    crossed = ["| model | steps | " + " | ".join(label for _, label in CROSSED) + " |",
               "|---|---:|" + "---:|" * len(CROSSED)]
    for model, label, k in CELLS:
        crossed.append(f"| {label} | {k} | " + " | ".join(cell(reports(model, k, s)) for s, _ in CROSSED) + " |")
    real = HERE / "real_text" / "report.json"
    lines = ["Cells: Gen. PPL mean over seeds (min-max) / mean entropy (nats) / mean judge tokens scored / "
             f"empty samples in all; seeds {sorted(seeds)}, 64 samples of 64 tokens each, w_sc 2.5, "
             "judge judges/gpt2-debian.", ""] + rows + ["", "The crossed pairs (same cells and seeds):", ""] + crossed
    if real.exists():
        m = json.loads(real.read_text())["metrics"]
        lines += ["", f"Real validation text (docs/study/real_validation_64tok.jsonl, {m['n_samples']} texts) under "
                      f"the same judge: Gen. PPL {m['gen_ppl']:.1f}, entropy {m['entropy']:.2f}."]
    (HERE / "table.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

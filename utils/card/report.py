"""The card's files: `card.json` (the numbers, flags, settings, timing and provenance), `card.md` (one page) and
`card.png` (robust accuracy vs eps, with the baseline where there is one)."""
from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from utils.card.inputs import ESTIMATE_METHOD, CardSettings
from utils.config import SUPERVISED
from utils.plots import curves_vs_eps, save_figure
from utils.store import atomic_write_bytes, atomic_write_json, provenance

FILES = {"md": "card.md", "json": "card.json", "png": "card.png"}
STANDARD = (100, 9, 5000)  # AutoAttack's standard: APGD steps, target classes, Square queries


def _e(eps: float) -> str:
    return f"{eps * 255:g}/255"


def plot_card(card: dict):
    """Robust accuracy (eps 0 = clean) against eps: the encoder, and the suite's supervised baseline dashed."""
    label = card["name"] if card["name"] != SUPERVISED or card["baseline"] is None else f"{card['name']} (this)"
    rows = [{"model": label, "eps": r["eps"], "norm": card["norm"], "accuracy": r["accuracy"]}
            for r in card["robust_acc"]]
    if card["baseline"] is not None:
        rows += [{"model": SUPERVISED, "eps": r["eps"], "norm": card["norm"], "accuracy": r["accuracy"]}
                 for r in card["baseline"]["robust_acc"]]
    a = card["attack"]
    return curves_vs_eps(pd.DataFrame(rows), title=f"{card['name']} on {card['data']['task']}\n{a['name']} L-inf, "
                                                    f"{a['steps']} steps, n = {a['n']}")


def render_markdown(card: dict) -> str:
    """card.md: one page with every number of card.json that a reader needs, the flags and what was run."""
    a, d, enc, conv, base, t = (card[k] for k in ("attack", "data", "encoder", "convergence", "baseline", "timing"))
    verdict = ("**UNRELIABLE**: " + ", ".join(card["unreliable_because"]) + " (see Flags)") if card["unreliable"] \
        else "no sanity flag fired"
    worst = card["robust_acc"][-1]
    lines = [f"# Robustness card: {card['name']} on {d['task']}", "",
             f"Linear evaluation (frozen encoder + logistic regression): clean accuracy **{card['clean_acc']:.3f}**, "
             f"robust accuracy **{worst['accuracy']:.3f}** at eps {_e(worst['eps'])} under {a['name']} "
             f"(L-inf, {a['steps']} steps, restarts {a['restarts']}, n = {a['n']}). Verdict: {verdict}.", ""]
    standard = (STANDARD[0], min(STANDARD[1], d["n_classes"] - 1), STANDARD[2])
    weaker = [f"{have} {what} (standard {want})" for have, what, want in zip(
        (a["steps"], a["n_targets"], a["n_queries"]), ("steps", "target classes", "Square queries"), standard)
        if have < want]
    if weaker:
        lines += [f"A shorter attack than AutoAttack's standard: {', '.join(weaker)}; it may overstate robustness. "
                  f"The convergence check below says whether more steps found more.", ""]
    lines += ["![robust accuracy vs eps](card.png)", ""]
    members = a["members"]
    head = ["eps", "robust accuracy", *(f"after {m}" for m in members), "Square only"]
    if base is not None:
        head += ["supervised baseline", "gap"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for i, r in enumerate(card["robust_acc"]):
        cells = ["0 (clean)" if r["eps"] == 0 else _e(r["eps"]), f"{r['accuracy']:.3f}",
                 *(f"{r['accuracy_after'][m]:.3f}" for m in members), f"{r['square_only']:.3f}"]
        if base is not None:
            cells += [f"{base['robust_acc'][i]['accuracy']:.3f}", f"{base['gap'][i]['gap']:+.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Each row: attack {a['name']} ({' -> '.join(members)}, each on the points the previous left), "
                  f"norm L-inf, eps as x/255 of the [0, 1] pixel range, steps {a['steps']}, restarts "
                  f"{a['restarts']}, {a['n_targets']} target classes (APGD-T, FAB-T), {a['n_queries']} Square "
                  f"queries, n = {a['n']} test points, seed {a['seed']}. \"after X\": accuracy left once the "
                  f"members up to X ran. \"Square only\": fraction of points only the black-box Square fooled "
                  f"(masking check; flagged above 0.01).", ""]
    note = card["baseline_note"][:1].upper() + card["baseline_note"][1:]
    lines += ["## Baseline", "", note + (
        "" if base is None else f": clean {base['clean_acc']:.3f}, same probe, points, attack and seed"
                                f"{' (numbers from the card cache)' if base['from_cache'] else ''}."), ""]
    lines += ["## Convergence check", "",
              f"APGD-CE at eps {_e(conv['eps'])} on the first {conv['n']} test points, the card's ensemble there: "
              f"{conv['reference']:.3f}. "
              + ", ".join(f"{r['steps']} steps x {r['restarts']}: {r['accuracy']:.3f}" for r in conv["rows"])
              + f"; strongest budget minus the ensemble: {conv['strongest_minus_reference']:+.3f}. "
              + ("Converged: the strongest budget is within 0.01 of the ensemble and of the first budget."
                 if conv["converged"] else "NOT converged: the strongest budget found more adversarial points than "
                 "the first budget or the ensemble, so short attacks overstate robustness here."), ""]
    lines += ["## Flags", ""] + ([f"- {f}" for f in card["flags"]] or ["- none"]) + [""]
    ad = f"; input adapter inside the model: {enc['input_adapter']}" if enc.get("input_adapter") else ""
    norm = enc.get("normalization")
    norm = "none" if not norm else ", ".join(f"{k} {[round(v, 4) for v in norm[k]]}" for k in ("mean", "std"))
    lines += ["## What was run", "",
              f"- encoder: {enc['source']} `{enc['path']}` (sha256 {enc['sha256'][:16]}...), method {enc['method']}, "
              f"arch {enc['arch']}, layout {enc.get('layout', '-')}, normalization inside the model: {norm}{ad}",
              f"- data: `{d['spec']}`, {d['n_train']} training / {d['n_test']} test points (seed {d['seed']}), "
              f"{d['n_classes']} classes, images {d['image_shape']}",
              f"- linear probe: {card['evaluation']['probe']}, {card['evaluation']['probe_iters']} iterations",
              f"- time: {t['total_s']:.1f} s in all (" + ", ".join(f"{k} {v:.1f} s" for k, v in t["stages_s"].items())
              + f"); estimated before the run: {t['estimate_s']:.1f} s ({t['estimate_method']})",
              f"- machine: {card['provenance']['device']}, load average {t['load_average_at_end'][0]:.1f} at the end "
              f"(other jobs on the machine lengthen the times), torch {card['provenance']['versions'].get('torch')}, "
              f"commit {card['provenance']['git_commit']}",
              f"- command: `{card['provenance']['command']}`", ""]
    return "\n".join(lines)


def write_card(card: dict, out: str | Path, *, settings: CardSettings, est: dict, stages: dict, t_start: float,
               profile: str, command: str | None) -> dict[str, Path]:
    """Complete `card` with timing and provenance and write card.json, card.md and card.png into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    card["timing"] = {"estimate_s": round(sum(est.values()), 1), "estimate_stages_s": est,
                      "estimate_method": ESTIMATE_METHOD, "stages_s": dict(stages),
                      "total_s": round(time.perf_counter() - t_start, 1), "load_average_at_end": [
                          round(v, 2) for v in os.getloadavg()]}
    params = {"encoder": card["encoder"]["path"], "method": card["encoder"]["method"], "data": card["data"]["spec"],
              "settings": asdict(settings)}
    card["provenance"] = {**provenance(profile, params, settings.seed), "command": command,
                          "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    fig = plot_card(card)
    paths = {k: out / v for k, v in FILES.items()}
    save_figure(fig, paths["png"])
    plt.close(fig)
    atomic_write_json(paths["json"], card)
    atomic_write_bytes(paths["md"], render_markdown(card).encode())
    return paths

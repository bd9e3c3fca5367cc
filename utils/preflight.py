"""Preflight: every input a profile needs, checked before any compute, with one error that lists all that is missing.

What is checked follows the parameters, never the profile's name: the in-domain `task` and each of `transfer_tasks`
(`utils.data.task_problems`: Fashion-MNIST's raw files, an ImageNet-style folder, CIFAR's files), the dense-task data
(`dataset`: Pascal VOC's folders under `voc_root`, or the Fashion-MNIST items of the generated scenes), and, when
notebook 01 trains nothing, the eight official checkpoints under `checkpoint_root` (each with its file name, URL and
sha256). The chain runner calls `check` for the notebooks it is about to run; `notebook_setup` for its notebook.
"""
from __future__ import annotations

from pathlib import Path

from utils.checkpoints import REGISTRY, CheckpointNotFoundError, checkpoint_path
from utils.config import MINIATURE_ROOT, notebook_parameters, repo_path
from utils.data import sources, task_problems
from utils.encoders import uses_official_checkpoints

VOC_YEAR = "2012"
VOC_PARTS = ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation")
README_SECTION = "README, 'Running the study on ImageNet'"


class PreflightError(FileNotFoundError):
    """Inputs of a profile are missing; the message lists every one, with the layout or file expected."""


def voc_problems(voc_root) -> list[str]:
    """What is missing of Pascal VOC 2012 under `voc_root` (the folder holding VOCdevkit/)."""
    if not voc_root:
        return ["dataset 'voc' needs the parameter `voc_root` (the folder holding VOCdevkit/VOC2012)"]
    base = repo_path(voc_root) / "VOCdevkit" / f"VOC{VOC_YEAR}"
    if not base.is_dir():
        return [f"{base}: missing (voc_root must hold VOCdevkit/VOC{VOC_YEAR} as the VOC tar unpacks)"]
    return [f"{base / part}: missing (Pascal VOC {VOC_YEAR} as its tar unpacks)" for part in VOC_PARTS
            if not (base / part).is_dir()]


def checkpoint_problems(methods, checkpoint_root) -> list[str]:
    """One line per official checkpoint missing under `checkpoint_root`: the file, where it comes from, its sha256."""
    out = []
    for m in methods:
        try:
            checkpoint_path(m, repo_path(checkpoint_root) if checkpoint_root else checkpoint_root)
        except CheckpointNotFoundError:
            spec = REGISTRY[m]
            where = Path(str(checkpoint_root or "<checkpoint_root>")) / spec.file_name
            out.append(f"{where}: missing ({spec.display_name}; {spec.conversion or 'from ' + spec.url}; sha256 "
                       f"{spec.sha256 or 'not published'})")
    return out


def problems(params_by_notebook: dict[str, dict]) -> list[str]:
    """Every missing input of the notebooks whose parameters are given ({"01": params, ...}), without repeats."""
    found: list[str] = []
    for nb, p in params_by_notebook.items():
        roots = sources(p)
        if nb == "01" and uses_official_checkpoints(p):
            found += checkpoint_problems(p["methods"], p.get("checkpoint_root"))
        if nb != "05":  # 05 reads its own scenes (below)
            for t in ([p["task"]] if "task" in p else []) + list(p.get("transfer_tasks", [])):
                found += task_problems(t, **roots)
        if p.get("dataset") == "voc":
            found += voc_problems(p.get("voc_root"))
        elif "dataset" in p:
            found += task_problems("fashion_mnist", **roots)  # the generated scenes are made of its items
    return list(dict.fromkeys(found))


def message(profile: str, missing: list[str]) -> str:
    hint = ""
    if any(MINIATURE_ROOT in m for m in missing):
        hint = f"\nThe miniature is generated: `python -m utils.miniature --out {MINIATURE_ROOT}`."
    return (f"{len(missing)} input(s) of profile {profile!r} are missing; nothing was run:\n  - "
            + "\n  - ".join(missing)
            + f"\nPoint the path parameters at your copies with `--set KEY=PATH` (keys data_root, imagenet_root, "
              f"transfer_root, voc_root, checkpoint_root); the layouts are in {README_SECTION}." + hint)


def check(profile: str, notebooks: list[str], overrides: dict | None = None,
          params: dict[str, dict] | None = None) -> None:
    """Raise `PreflightError` listing everything notebooks `notebooks` ("01".."05") of `profile` need and lack.
    `params`: the notebooks' parameters when known (a notebook passes its own); else the profile's with
    `overrides`."""
    params = params or {nb: notebook_parameters(profile, nb, overrides) for nb in notebooks}
    missing = problems(params)
    if missing:
        raise PreflightError(message(profile, missing))

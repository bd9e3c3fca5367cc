"""The eight encoders of notebook 01, for any profile: trained here, or the official checkpoints.

Which one is data, not a profile name: when notebook 01's parameters train nothing (`epochs == 0` or
`n_pretrain == 0`, as in `paper`), the encoders are the official ResNet-50 files under `checkpoint_root`
(`utils.checkpoints.load_backbone`); otherwise they are trained by `utils.pretrain.pretrain_or_load` with those
parameters (a cache hit once notebook 01 ran).

Notebook 01 records what it produced in `<cache_dir>/encoders/01_manifest.json` (`pretrained_encoders(...,
record=True)`): its parameters as it ran them and each encoder's file with its sha256. Notebooks 02-05 read exactly
those encoders (`load_encoders`) and 01's parameters (`notebook01_parameters`), so a knob changed in notebook 01
reaches every later notebook, and a later notebook never trains encoders of its own behind 01's back.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import pandas as pd
from torch import nn

from utils.checkpoints import REGISTRY, checkpoint_path, load_backbone, load_official_classifier
from utils.config import OWN_FC_REGIME, SUPERVISED, notebook_parameters, output_dirs
from utils.data import sources
from utils.parallel import job_threads, local_workers, map_jobs
from utils.pretrain import pretrain_or_load
from utils.store import CorruptFileError, atomic_write_json, file_sha256, read_json_checked

MANIFEST = "01_manifest.json"
# A seed replicate (`seeds` > 1) is named after its method and training seed: "simclr@seed1".
REPLICATE_MARK = "@seed"


def uses_official_checkpoints(params01: dict) -> bool:
    """True when notebook 01's parameters train nothing here (`epochs == 0` or `n_pretrain == 0`)."""
    return int(params01["epochs"]) == 0 or int(params01["n_pretrain"]) == 0


def replicate_name(method: str, seed: int) -> str:
    """The name of `method` trained with training seed `seed` as a seed replicate: "simclr@seed1"."""
    return f"{method}{REPLICATE_MARK}{int(seed)}"


def seed_replicates(params01: dict) -> dict[str, tuple[str, int]]:
    """{name: (method, training seed)} of the extra training runs notebook 01's parameters ask for: every method of
    `seed_methods` trained again with the seeds seed+1, ..., seed+seeds-1 (the master `seed` is the main run's).
    A replicate differs from the main run in every random draw of its training (initialization, the pretraining
    subset, the order and the views), nothing else. {} when `seeds` is 1. ValueError, naming the fix, when the
    request cannot be honoured: official checkpoints (one file per method), a method not in `methods`, or seed
    methods without the supervised baseline (every seed's SSL-minus-supervised gap needs it)."""
    n, chosen = int(params01.get("seeds", 1)), list(params01.get("seed_methods") or [])
    if n < 1:
        raise ValueError(f"seeds must be >= 1 (got {n}): it counts the training seeds of each method in seed_methods")
    if n == 1 or not chosen:
        return {}
    if uses_official_checkpoints(params01):
        raise ValueError(f"seeds={n}, but notebook 01 trains nothing here (official checkpoints: one file per "
                         f"method): set seeds=1 (`--set seeds=1`), or train encoders here (epochs, n_pretrain > 0)")
    unknown = [m for m in chosen if m not in params01["methods"]]
    if unknown:
        raise ValueError(f"seed_methods {unknown} are not among methods {list(params01['methods'])}: "
                         f"add them to methods or drop them from seed_methods")
    if SUPERVISED not in chosen or len(chosen) < 2:
        raise ValueError(f"seed_methods {chosen} must hold {SUPERVISED!r} and at least one SSL method: the seed "
                         f"spread of the SSL-minus-supervised gap needs both trained with every seed")
    base = int(params01["seed"])
    return {replicate_name(m, base + k): (m, base + k) for m in chosen for k in range(1, n)}


def manifest_path(profile: str, cache_dir: str | Path | None = None) -> Path:
    """Where notebook 01 records its encoders: `<cache_dir>/encoders/01_manifest.json` (default: the profile's)."""
    cache_dir = cache_dir if cache_dir is not None else output_dirs(profile)["cache_dir"]
    return Path(cache_dir) / "encoders" / MANIFEST


def pretrained_encoders(profile: str, methods: Sequence[str], *, params01: dict | None = None,
                        checkpoint_root: str | Path | None = None, cache_dir: str | Path | None = None,
                        progress: bool = False, record: bool = False,
                        replicates: bool | None = None) -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder, info)}: the encoders made with notebook 01's parameters `params01`.

    params01: notebook 01's parameters (default: the profile's, `notebook_parameters(profile, "01")`); notebook 01
        passes its own so that a knob changed there is the one used.
    checkpoint_root: folder of the official files (default: params01["checkpoint_root"]); used only when nothing is
        trained here (see `uses_official_checkpoints`).
    cache_dir: the pretraining cache (default: the profile's, `output_dirs(profile)["cache_dir"]`).
    record: write the manifest that notebooks 02-05 read (`load_encoders`, `load_replicates`); notebook 01 does.
    replicates: also train the seed replicates of `seed_replicates(params01)` (default: when recording; read them
        with `load_replicates`). Every encoder not in the cache is trained first, in worker processes (`_trained`).
    Trained encoders: eval mode, CPU, float32; info as returned by `pretrain_or_load` (loss_history, wall_time_s,
    from_cache, ...). Official encoders: eval mode, CPU; info {"method", "path", "from_cache": True}.
    """
    p = dict(params01) if params01 is not None else notebook_parameters(profile, "01")
    cache_dir = cache_dir if cache_dir is not None else output_dirs(profile)["cache_dir"]
    reps = seed_replicates(p)  # a request it cannot honour fails here, before any training
    replicates = record if replicates is None else replicates
    if uses_official_checkpoints(p):
        root = checkpoint_root if checkpoint_root is not None else p["checkpoint_root"]
        verify = bool(p.get("verify_sha256", True))
        if not verify:
            print("verify_sha256 is False: the checkpoints' sha256 is NOT checked against the registry (recorded in "
                  "the manifest and the provenance)")
        out = {}
        for m in methods:
            path = checkpoint_path(m, root)
            out[m] = (load_backbone(m, path, sha256=None if verify else False),
                      {"method": m, "path": str(path), "from_cache": True, "sha256_verified": verify})
    else:
        out = _trained(p, {**{m: (m, int(p["seed"])) for m in methods}, **(reps if replicates else {})},
                       cache_dir=cache_dir, profile=profile, progress=progress)
    if record:
        official = uses_official_checkpoints(p)
        entries = {m: {"kind": "official" if official else "trained", "path": info["path"],
                       "sha256": file_sha256(info["path"]), "arch": getattr(enc, "arch", "resnet50")}
                   for m, (enc, info) in out.items()}
        atomic_write_json(manifest_path(profile, cache_dir),
                          {"profile": profile, "params01": p,
                           "encoders": {m: e for m, e in entries.items() if m not in reps},
                           "replicates": {m: {**entries[m], "method": ms[0], "seed": ms[1]} for m, ms in reps.items()
                                          if m in entries},
                           "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return {m: out[m] for m in methods}


def training_summary(encoder_set: dict[str, tuple[nn.Module, dict]]) -> pd.DataFrame:
    """One row per encoder of `encoder_set` ({name: (encoder, info)}, as `pretrained_encoders` and `load_replicates`
    return them): method (the name), arch, epochs trained, wall_s, from_cache, final_loss (NaN for official files)."""
    return pd.DataFrame([{"method": m, "arch": getattr(e, "arch", "resnet50"),
                          "epochs": len(i.get("loss_history", [])), "wall_s": round(i.get("wall_time_s", 0.0), 1),
                          "from_cache": i.get("from_cache"),
                          "final_loss": (i.get("loss_history") or [float("nan")])[-1]}
                         for m, (e, i) in encoder_set.items()],
                        columns=["method", "arch", "epochs", "wall_s", "from_cache", "final_loss"])


def _recipe(method: str, seed: int, p: dict) -> dict:
    """pretrain_or_load's arguments for `method` trained with `seed` and notebook 01's recipe `p`."""
    return dict(method=method, arch=p["arch"], n_pretrain=p["n_pretrain"], epochs=p["epochs"],
                batch_size=p["batch_size"], lr=p["lr"], augmentations=p["augmentations"], seed=seed,
                task=p.get("task", "fashion_mnist"), sources=sources(p))


def _pretrain_job(method: str, seed: int, p: dict, cache_dir: str, profile: str) -> dict:
    """Train (or find in the cache) one encoder of notebook 01; module level, so worker processes can run it.
    Returns what the caller reports: from_cache, wall_time_s, loss_history."""
    _, info = pretrain_or_load(**_recipe(method, seed, p), cache_dir=cache_dir, profile=profile, progress=False)
    return {k: info[k] for k in ("from_cache", "wall_time_s", "loss_history")}


def _trained(p: dict, runs: dict[str, tuple[str, int]], *, cache_dir, profile: str,
             progress: bool) -> dict[str, tuple[nn.Module, dict]]:
    """{name: (encoder, info)} for runs {name: (method, training seed)} with notebook 01's recipe `p`. Runs not in
    the cache train first, one single-threaded worker process per core (`utils.parallel.map_jobs`; measured on the
    2-core machine: two 1-thread trainings side by side 25.1 s, one after the other with 2 threads 31.9 s); each
    run's weights depend on its parameters only, not on the worker count or the load (fixed threads per job)."""
    found = {name: pretrain_or_load(**_recipe(m, s, p), cache_dir=cache_dir, profile=profile, cached_only=True)
             for name, (m, s) in runs.items()}
    todo = [name for name, hit in found.items() if hit is None]
    jobs = [dict(method=runs[n][0], seed=runs[n][1], p=p, cache_dir=str(cache_dir), profile=profile) for n in todo]
    done = map_jobs(_pretrain_job, jobs, workers=local_workers("cpu", len(jobs)), threads=job_threads("cpu"),
                    desc=f"pretraining {len(jobs)} encoders", progress=progress)
    for name, fresh in zip(todo, done):
        encoder, info = pretrain_or_load(**_recipe(*runs[name], p), cache_dir=cache_dir, profile=profile,
                                         cached_only=True)  # in the cache now
        info.update(fresh)  # as the job reported it (from_cache False: trained just now)
        found[name] = (encoder, info)
    return found


def _manifest(profile: str, cache_dir: str | Path | None) -> dict:
    path = manifest_path(profile, cache_dir)
    fix = f"run notebook 01 (`python -m utils.pipeline --profile {profile} --only 01 --force`)"
    if not path.is_file():
        raise FileNotFoundError(f"notebook 01 has not recorded its encoders for profile {profile!r} ({path} is "
                                f"missing): {fix}")
    try:
        man = read_json_checked(path, dict)
        if not {"params01", "encoders"} <= set(man):
            raise CorruptFileError(path, f"not an encoder manifest (keys {sorted(man)[:5]})")
    except CorruptFileError as e:
        raise CorruptFileError(path, f"{e.reason}: {fix}") from None
    return man


def notebook01_parameters(profile: str, cache_dir: str | Path | None = None) -> dict:
    """The parameters notebook 01 last ran with for `profile` (from its manifest): what later notebooks use when
    they need 01's settings (e.g. the pretraining recipe of notebook 04's factor ablation)."""
    return dict(_manifest(profile, cache_dir)["params01"])


def _official(man: dict, methods: Sequence[str]) -> list[str]:
    return [m for m in methods if man["encoders"].get(m, {}).get("kind") == "official"]


def published_top1(profile: str, methods: Sequence[str],
                   cache_dir: str | Path | None = None) -> dict[tuple[str, str], float]:
    """{(method, regime): published top-1 (%)} for the official checkpoints notebook 01 loaded (the registry's
    values, measured on `utils.checkpoints.PUBLISHED_TASK`): regime "linear" for the linear evaluation, and
    `OWN_FC_REGIME` for a checkpoint's own classifier (`fc_top1`, the supervised one); {} when 01 trained its
    encoders here."""
    man = _manifest(profile, cache_dir)
    out = {}
    for m in _official(man, methods):
        for regime, top1 in (("linear", REGISTRY[m].linear_top1), (OWN_FC_REGIME, REGISTRY[m].fc_top1)):
            if top1 is not None:
                out[(m, regime)] = top1
    return out


def official_classifiers(profile: str, methods: Sequence[str], *,
                         cache_dir: str | Path | None = None) -> dict[str, nn.Module]:
    """{method: the checkpoint's own ImageNet classifier, encoder + its `fc`} for the official checkpoints notebook
    01 loaded whose registry row lists a published top-1 of that classifier (`fc_top1`: the supervised one), each
    file checked against the sha256 01 recorded (`utils.checkpoints.load_official_classifier`); {} when 01 trained
    its encoders here. Eval mode, CPU; logits [N, 1000] over the ILSVRC-2012 classes."""
    man = _manifest(profile, cache_dir)
    return {m: load_official_classifier(m, man["encoders"][m]["path"], sha256=man["encoders"][m]["sha256"])
            for m in _official(man, methods) if REGISTRY[m].fc_top1 is not None}


def load_encoders(profile: str, methods: Sequence[str], *, progress: bool = False, device: str = "cpu",
                  cache_dir: str | Path | None = None) -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder in eval mode on `device`, a copy of its info)}: the encoders notebook 01 recorded for
    `profile` (its manifest), each checked against the sha256 recorded there. A trained encoder whose file is
    damaged is trained again by `pretrain_or_load` (deterministic: the same weights); an error names the file or
    method and the fix when an encoder is not the one notebook 01 recorded."""
    man = _manifest(profile, cache_dir)
    missing = [m for m in methods if m not in man["encoders"]]
    if missing:
        raise LookupError(f"notebook 01 made no encoder for {missing} (it made {sorted(man['encoders'])}; "
                          f"{manifest_path(profile, cache_dir)}): add them to 01's `methods` and rerun notebook 01")
    p01 = man["params01"]
    if uses_official_checkpoints(p01):
        found = {m: (load_backbone(m, man["encoders"][m]["path"], sha256=man["encoders"][m]["sha256"]),
                     {"method": m, "path": man["encoders"][m]["path"], "from_cache": True}) for m in methods}
    else:
        found = pretrained_encoders(profile, methods, params01=p01, cache_dir=cache_dir, progress=progress)
        for m, (_, info) in found.items():
            if file_sha256(info["path"]) != man["encoders"][m]["sha256"]:
                raise CorruptFileError(info["path"], f"the {m} encoder is not the one notebook 01 recorded (sha256 "
                                                     f"differs): rerun notebook 01 (`python -m utils.pipeline "
                                                     f"--profile {profile} --only 01 --force`)")
    return {m: (enc.to(device).eval(), dict(info or {})) for m, (enc, info) in found.items()}


def replicate_runs(profile: str, cache_dir: str | Path | None = None) -> dict[str, tuple[str, int]]:
    """{name: (method, training seed)} of the seed replicates notebook 01 recorded for `profile` ({} when it made
    none: `seeds` 1, or official checkpoints)."""
    return {n: (e["method"], int(e["seed"])) for n, e in _manifest(profile, cache_dir).get("replicates", {}).items()}


def load_replicates(profile: str, *, progress: bool = False, device: str = "cpu",
                    cache_dir: str | Path | None = None) -> dict[str, tuple[nn.Module, dict]]:
    """{name: (encoder, info)} of the seed replicates notebook 01 recorded (`replicate_runs`), each checked against
    the sha256 recorded there, as `load_encoders` checks the main encoders."""
    man = _manifest(profile, cache_dir)
    runs = replicate_runs(profile, cache_dir)
    found = _trained(man["params01"], runs, cache_dir=cache_dir if cache_dir is not None else
                     output_dirs(profile)["cache_dir"], profile=profile, progress=progress)
    for name, (_, info) in found.items():
        if file_sha256(info["path"]) != man["replicates"][name]["sha256"]:
            raise CorruptFileError(info["path"], f"the seed replicate {name} is not the one notebook 01 recorded "
                                                 f"(sha256 differs): rerun notebook 01 (`python -m utils.pipeline "
                                                 f"--profile {profile} --only 01 --force`)")
    return {n: (enc.to(device).eval(), dict(info)) for n, (enc, info) in found.items()}

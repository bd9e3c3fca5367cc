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

from torch import nn

from utils.checkpoints import REGISTRY, checkpoint_path, load_backbone, load_official_classifier
from utils.config import OWN_FC_REGIME, notebook_parameters, output_dirs
from utils.data import sources
from utils.pretrain import pretrain_or_load
from utils.store import CorruptFileError, atomic_write_json, file_sha256, read_json_checked

MANIFEST = "01_manifest.json"


def uses_official_checkpoints(params01: dict) -> bool:
    """True when notebook 01's parameters train nothing here (`epochs == 0` or `n_pretrain == 0`)."""
    return int(params01["epochs"]) == 0 or int(params01["n_pretrain"]) == 0


def manifest_path(profile: str, cache_dir: str | Path | None = None) -> Path:
    """Where notebook 01 records its encoders: `<cache_dir>/encoders/01_manifest.json` (default: the profile's)."""
    cache_dir = cache_dir if cache_dir is not None else output_dirs(profile)["cache_dir"]
    return Path(cache_dir) / "encoders" / MANIFEST


def pretrained_encoders(profile: str, methods: Sequence[str], *, params01: dict | None = None,
                        checkpoint_root: str | Path | None = None, cache_dir: str | Path | None = None,
                        progress: bool = False, record: bool = False) -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder, info)}: the encoders made with notebook 01's parameters `params01`.

    params01: notebook 01's parameters (default: the profile's, `notebook_parameters(profile, "01")`); notebook 01
        passes its own so that a knob changed there is the one used.
    checkpoint_root: folder of the official files (default: params01["checkpoint_root"]); used only when nothing is
        trained here (see `uses_official_checkpoints`).
    cache_dir: the pretraining cache (default: the profile's, `output_dirs(profile)["cache_dir"]`).
    record: write the manifest that notebooks 02-05 read (`load_encoders`); notebook 01 does.
    Trained encoders: eval mode, CPU, float32; info as returned by `pretrain_or_load` (loss_history, wall_time_s,
    from_cache, ...). Official encoders: eval mode, CPU; info {"method", "path", "from_cache": True}.
    """
    p = dict(params01) if params01 is not None else notebook_parameters(profile, "01")
    cache_dir = cache_dir if cache_dir is not None else output_dirs(profile)["cache_dir"]
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
        out = {m: pretrain_or_load(m, arch=p["arch"], n_pretrain=p["n_pretrain"], epochs=p["epochs"],
                                   batch_size=p["batch_size"], lr=p["lr"], augmentations=p["augmentations"],
                                   seed=p["seed"], task=p.get("task", "fashion_mnist"), sources=sources(p),
                                   cache_dir=cache_dir, profile=profile,
                                   progress=progress)
               for m in methods}
    if record:
        official = uses_official_checkpoints(p)
        entries = {m: {"kind": "official" if official else "trained", "path": info["path"],
                       "sha256": file_sha256(info["path"]), "arch": getattr(enc, "arch", "resnet50")}
                   for m, (enc, info) in out.items()}
        atomic_write_json(manifest_path(profile, cache_dir),
                          {"profile": profile, "params01": p, "encoders": entries,
                           "written": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return out


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

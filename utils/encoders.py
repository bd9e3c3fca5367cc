"""The eight encoders of notebook 01, for any profile: trained here, or the official checkpoints.

Which one is data, not a profile name: when notebook 01's parameters train nothing (`epochs == 0` or
`n_pretrain == 0`, as in `paper`), the encoders are the official ResNet-50 files under `checkpoint_root`
(`utils.checkpoints.load_backbone`); otherwise they are trained by `utils.pretrain.pretrain_or_load` with those
parameters (a cache hit once notebook 01 ran).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch import nn

from utils.checkpoints import checkpoint_path, load_backbone
from utils.config import notebook_parameters, output_dirs
from utils.pretrain import pretrain_or_load


def uses_official_checkpoints(params01: dict) -> bool:
    """True when notebook 01's parameters train nothing here (`epochs == 0` or `n_pretrain == 0`)."""
    return int(params01["epochs"]) == 0 or int(params01["n_pretrain"]) == 0


def pretrained_encoders(profile: str, methods: Sequence[str], *, params01: dict | None = None,
                        checkpoint_root: str | Path | None = None, cache_dir: str | Path | None = None,
                        progress: bool = False) -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder, info)}: the encoders notebook 01 made for `profile`.

    params01: notebook 01's parameters (default: the profile's, `notebook_parameters(profile, "01")`); notebook 01
        passes its own so that a knob changed there is the one used.
    checkpoint_root: folder of the official files (default: params01["checkpoint_root"]); used only when nothing is
        trained here (see `uses_official_checkpoints`).
    cache_dir: the pretraining cache (default: the profile's, `output_dirs(profile)["cache_dir"]`).
    Trained encoders: eval mode, CPU, float32; info as returned by `pretrain_or_load` (loss_history, wall_time_s,
    from_cache, ...). Official encoders: eval mode, CPU; info {"method", "path", "from_cache": True}.
    """
    p = dict(params01) if params01 is not None else notebook_parameters(profile, "01")
    if uses_official_checkpoints(p):
        root = checkpoint_root if checkpoint_root is not None else p["checkpoint_root"]
        out = {}
        for m in methods:
            path = checkpoint_path(m, root)
            out[m] = (load_backbone(m, path), {"method": m, "path": str(path), "from_cache": True})
        return out
    cache_dir = cache_dir if cache_dir is not None else output_dirs(profile)["cache_dir"]
    return {m: pretrain_or_load(m, arch=p["arch"], n_pretrain=p["n_pretrain"], epochs=p["epochs"],
                                batch_size=p["batch_size"], lr=p["lr"], augmentations=p["augmentations"],
                                seed=p["seed"], data_root=p["data_root"], cache_dir=cache_dir, profile=profile,
                                progress=progress)
            for m in methods}


def load_encoders(profile: str, methods: Sequence[str], *, progress: bool = False, device: str = "cpu",
                  checkpoint_root: str | Path | None = None) -> dict[str, tuple[nn.Module, dict]]:
    """{method: (encoder in eval mode on `device`, a copy of its info)}: `pretrained_encoders` for the profile's
    notebook-01 parameters, moved to `device`."""
    found = pretrained_encoders(profile, methods, checkpoint_root=checkpoint_root, progress=progress)
    return {m: (enc.to(device).eval(), dict(info or {})) for m, (enc, info) in found.items()}

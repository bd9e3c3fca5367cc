"""Bring your own encoder: a one-command robustness card for a frozen (self-supervised) encoder.

    python -m utils.card --encoder PATH_OR_NAME --method M --data SPEC [--eps 1/255,4/255] [--out DIR]

What it runs (the suite's own code): the linear probe of `utils.probe` (frozen encoder + logistic regression), the
clean accuracy, the AutoAttack ensemble of `utils.attacks.robust_accuracy` (APGD-CE, APGD-T, FAB-T, Square) over the
L-inf eps grid, AutoAttack's masking check (Square alone fooling points every white-box member missed, tolerance
`utils.robustness.BLACKBOX_TOLERANCE`), the convergence check of `utils.robustness.convergence_run`, and the same
probe and attack on the suite's supervised encoder when the data is one of the suite's tasks. Before it starts it
prints an estimated time measured on a short probe; then a progress bar. It writes `card.md` (one page), `card.json`
(in the spirit of RobustBench's model_info: clean accuracy, robust accuracy per eps and attack, n, eps units, flags,
`unreliable`, timing, provenance) and `card.png` (robust accuracy vs eps).

The encoder (`--encoder`): a checkpoint file or folder in any official layout `utils.checkpoints.load_backbone`
knows (`--method` picks the layout and normalization), a `.safetensors` file (an official layout, or one of the
suite's small ResNets, recognised by its tensor names and shapes), `timm:NAME --weights FILE` (built without
download), or `suite:METHOD` (the suite's trained encoder of `--profile`). The data (`--data`): `fashion_mnist`,
`digits`, `cifar10:ROOT`, `imagefolder:ROOT` (ROOT/train and ROOT/val, one folder per class). An encoder built for
another channel count gets an input adapter inside the model (grey <-> RGB; `--resize` for another size), so every
attack perturbs the data as given. A missing file, an unknown layout or data spec is refused with a `CardError`
(exit status 2) that says what and how to fix it.

Layout: `inputs` (settings, encoders, data), `report` (card.md, card.json, card.png), `run` (the stages and
`build_card`), `__main__` (the command). Studies layer: imports attacks, checkpoints, config, data, models, plots,
pretrain, probe, robustness, store.
"""
from utils.card.inputs import (SIZES, UNRELIABLE_FLAGS, CardError, CardSettings, load_card_data, load_card_encoder,
                               suite_encoder_path)
from utils.card.report import render_markdown
from utils.card.run import attack_rows, autoattack, build_card, convergence_check, masking_flags, probe_classifier

__all__ = ["SIZES", "UNRELIABLE_FLAGS", "CardError", "CardSettings", "attack_rows", "autoattack", "build_card",
           "convergence_check", "load_card_data", "load_card_encoder", "masking_flags", "probe_classifier",
           "render_markdown", "suite_encoder_path"]

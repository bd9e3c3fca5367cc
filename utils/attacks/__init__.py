"""The attack kernel: FGSM, PGD (any per-point loss, or any objective through a loss hook), APGD-CE / APGD-DLR, and
`robust_accuracy` over an eps grid with sanity flags. Base layer: imports only `utils.runtime`.

Conventions (every function here):
- images `x`: float [N, C, H, W] in [0, 1]; labels `y`: int64 [N]; a model maps [0, 1] images to logits [N, K]
  (normalization is a layer inside the model, see `utils.models.Normalize`).
- `eps` is in image units: linf eps=8/255 moves each pixel by at most 8/255; l2 eps bounds the Euclidean norm of the
  whole perturbation of one image.
- an attack returns `x_adv` [N, C, H, W] in the eps-ball around `x` and in [0, 1]. A point fooled at ANY iterate of ANY
  restart is returned as that fooled point; a point never fooled is returned at its highest-loss iterate
  (`keep="first-fooling"`, the verdict mode; PGD also offers "best-loss" and "last", see `pgd`).
- "fooled" is decided in float32, whatever precision the gradient steps used (`amp`, under the precision policy of
  `utils.runtime`).
- the model is attacked through a view (`attack_view`): eval mode, parameter gradients off and, with
  `channels_last`, 4-D weights in channels_last memory format, all on module objects of the view's own that alias
  the model's weights. The model itself is never changed, not even during the attack, so threads may share it.
- the public boundary refuses with a clear error what would fail deep inside torch or give wrong numbers: images
  outside [0, 1] or not a float tensor (float64 / bfloat16 are cast to float32), labels that are not integer class
  indices in [0, K), a linf eps above 0.5 (eps given in grey levels), a model whose weights are not float32 or not
  on one device, a model or objective returning no tensor.
- speed levers, each measured by `bench/attacks.py --levers` (resnet_tiny, 1000 Fashion-MNIST points, linf grid
  {0,1,2,4,8,16}/255, 10 steps, one CPU thread; speed-up over torchattacks' PGD): the eps grid walked once with points
  leaving the batch as soon as they are fooled, no parameter gradients, float32: 2.2x; + bf16 autocast for the
  gradient steps (`amp`): 3.2x; + channels_last weights: 3.6-4.1x; BatchNorm folded into the convolutions of the
  gradient oracle (`fold_bn`; verdicts still from the model): a further 13 % (2 threads). Since the cascade became as
  strong as an independent attack at every eps (one run per eps from the carried point plus a random offset),
  3.5x (1 thread) and 3.5x (2 threads) idle, 2.8-4.2x beside another training job (2026-11-29). Cycle detection
  (`pgd_kernel`, linf) saves gradients only where iterates repeat: long runs with a large fixed step
  (`bench/cycles.py`). torch.compile of the gradient oracle: 1.28x a step on resnet_tiny for 23 s of compiling, so
  not used; CUDA graphs neither: the batch shrinks as points are fooled, so shapes change at nearly every step.

Layout (one loop per attack, one PGD loop for every use):
    geometry  losses (ce, cw, dlr), the eps-ball (project, random start), input checks, sanity-flag names
    target    the model as a kernel sees it: `ClassifierTarget` (verdicts in float32) or `ObjectiveTarget` (any
              objective, e.g. a detector's losses or SegPGD), `fold_batchnorm`, `attack_view`
    kernels   `pgd_kernel` (with its keep modes), `fgsm_kernel`, `apgd_kernel`, `apgd_t_kernel` (`KERNELS`)
    external  FAB-T and Square borrowed from torchattacks, run on survivors, verdicts in float32
    api       `ATTACKS` and `ENSEMBLES` ("autoattack"), `fgsm`, `pgd`, `apgd`, `pgd_objective`,
              `robust_accuracy` (any attack or ensemble over an eps grid) and its `RobustAccuracy` result
"""
from utils.attacks.api import (ATTACKS, ENSEMBLES, NOT_FOOLED, WRONG_CLEAN, RobustAccuracy, apgd, apgd_ce,
                               apgd_dlr, fgsm, pgd, pgd_objective, robust_accuracy)
from utils.attacks.geometry import (ACCURACY_RISES, AMP_MODES, BLACKBOX_BEATS_WHITEBOX, LOSSES, NAN_GRAD,
                                    NONFINITE_LOGITS, NORMS, NOT_CONVERGED, NO_GRADIENT, OUTSIDE_BALL,
                                    PROBABILITY_OUTPUTS, RANDOMIZED, RISES_WITH_EPS, ZERO_GRAD, ball_flags,
                                    ball_violation, check_eps, ce_loss, cw_loss, dlr_loss, flag, flag_name,
                                    monotonicity_flags, project)
from utils.attacks.kernels import KEEP_MODES, apgd_checkpoints
from utils.attacks.target import fold_batchnorm

__all__ = ["ACCURACY_RISES", "AMP_MODES", "ATTACKS", "BLACKBOX_BEATS_WHITEBOX", "ENSEMBLES", "KEEP_MODES",
           "NOT_FOOLED", "WRONG_CLEAN", "NOT_CONVERGED", "NO_GRADIENT", "PROBABILITY_OUTPUTS", "RANDOMIZED", "LOSSES", "NAN_GRAD",
           "NONFINITE_LOGITS", "NORMS", "OUTSIDE_BALL", "RISES_WITH_EPS", "RobustAccuracy", "ZERO_GRAD", "apgd",
           "apgd_ce", "apgd_checkpoints", "apgd_dlr", "ball_flags", "ball_violation", "ce_loss", "check_eps",
           "cw_loss", "dlr_loss", "fgsm", "flag", "flag_name", "fold_batchnorm", "monotonicity_flags", "pgd",
           "pgd_objective", "project", "robust_accuracy"]

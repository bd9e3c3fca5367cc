"""Adversarial robustness of discriminative self-supervised encoders: the helper package behind the notebooks.

One concern per module:
    profiles    the `smoke`, `cpu` and `paper` parameter sets, as data
    data        Fashion-MNIST, digits, ImageNet/transfer roots; tensors in [0, 1]
    models      small ResNets, normalization-inside-the-model, classifiers; official checkpoint loading
    checkpoints official ResNet-50 checkpoint formats, read safely
    augment     grayscale-friendly augmentation families
    ssl         the seven SSL losses and heads, the shared pretraining loop
    evaluation  linear probes, fine-tuning, adversarial fine-tuning
    attacks     the attack kernel: FGSM, PGD, APGD, robust_accuracy with sanity flags
    dense       Fashion scenes, detection and segmentation under attack
    results     atomic files, tidy tables, provenance, parameter hashes
    plots       figures drawn from result tables only
    pipeline    the papermill chain runner (`python -m utils.pipeline`)
"""

__version__ = "0.1.0"

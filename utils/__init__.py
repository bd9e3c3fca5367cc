"""Adversarial robustness of discriminative self-supervised encoders: the helper package behind the notebooks.

Layered: a module imports only modules listed above it here (tests/test_layers.py keeps it so).

base (imports nothing above the base)
    config       the profiles (smoke, cpu, paper) as data, shared names (methods, regimes), every knob's meaning
    store        atomic files, keyed caches that check their sha256, digests (the only place that hashes), provenance
    runtime      the device and precision policy (bf16 only where the hardware has it), seeds, batches, LR schedule
    parallel     worker processes for independent jobs, cached jobs, torch.distributed set-up
    attacks/     the attack kernel: FGSM, PGD (one loop, with a loss hook), APGD, robust_accuracy, sanity flags
data and models
    imageset     images decoded on demand (ImageNet, CIFAR at any size): len, shape, [idx], batches by workers
    data         Fashion-MNIST, digits, ImageNet/transfer roots; tensors in [0, 1]
    augment      grayscale-friendly augmentation families
    models       small ResNets, Normalize inside the model, Encoder, Classifier, classifier files
    scenes       Fashion scenes and Pascal VOC for the dense tasks
    checkpoints  the official ResNet-50 checkpoint formats, read safely
methods
    ssl          the seven SSL losses (pure functions), heads and method modules
    pretrain     the one pretraining loop: cache, resumable checkpoints, epoch snapshots
    encoders     the encoders of a profile: trained here or loaded from official checkpoints
    probe        features, the linear probe, fine-tuning and adversarial fine-tuning
    dense        detection and segmentation heads on frozen encoders, attacked, mAP and mIoU
studies
    robustness   eps sweeps, the attack grid, torchrun sharding, transfer, Square (`python -m utils.robustness`)
    stats        bootstrap intervals, gap tables, verdict sentences
    factors      the four-factor ablation (architecture, training length, augmentation, batch size)
    plots        figures drawn from tables only
    pipeline     the papermill chain runner (`python -m utils.pipeline`) and `notebook_setup`
"""

__version__ = "0.1.0"

"""Official checkpoint layouts load back to the same features; wrong, tampered and code-running files are refused.

One randomly initialized torchvision resnet50 (with random BatchNorm statistics, so skipped buffers would show) is
written in every official layout, as .pth and as .safetensors, and must come back with identical features on a
random [0, 1] batch. Head tensors carry the official names; their shapes are shrunk (they are dropped anyway), except
momentum/student copies of the backbone, which carry different values so that loading the wrong copy would show.
"""
from __future__ import annotations

import argparse
import hashlib
import pickle

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from utils import checkpoints as C, encoders, store
from utils.config import METHODS
from utils.models import IMAGENET_MEAN, IMAGENET_STD, Normalize


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny forwards on a shared 2-core machine: a second thread only spins (measured ~15x more CPU time)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ref(one_thread):
    torch.manual_seed(0)
    net = torchvision.models.resnet50(weights=None)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 1.5)
                m.num_batches_tracked.fill_(7)
    net.eval()
    sd = {k: v.clone() for k, v in net.state_dict().items()}  # incl. fc.*
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    net.fc = nn.Identity()
    with torch.no_grad():
        normalized = Normalize(IMAGENET_MEAN, IMAGENET_STD)(x)
        feats = {"imagenet": net(normalized), "none": net(x)}
        fmap = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(normalized))))))))
    return {"sd": sd, "x": x, "feats": feats, "fmap": fmap}


def _no_fc(sd):
    return {k: v for k, v in sd.items() if not k.startswith("fc.")}


def _prefixed(prefix, d):
    return {prefix + k: v for k, v in d.items()}


def _other(sd):
    """A different copy of the backbone (momentum encoder, student): loading it instead would change the features.
    Constant tensors expanded to full shape, so torch.save writes a few bytes per key instead of another 100 MB."""
    return {k: torch.full((), 0.5 if v.is_floating_point() else 3, dtype=v.dtype).expand(v.shape)
            for k, v in sd.items()}


def _head(*names):
    return {n: torch.full((4, 4), 0.5) for n in names}


_OPT = {"state": {}, "param_groups": [{"lr": 0.03, "momentum": 0.9, "params": [0, 1]}]}


# (method, layout) -> (builder of the object as the official file holds it, container key or None)
LAYOUTS = {
    ("supervised", "backbone"): (lambda sd: dict(sd), None),
    ("simclr", "converted"): (lambda sd: {"state_dict": dict(sd)}, "state_dict"),
    ("mocov2", "full"): (lambda sd: {"epoch": 800, "arch": "resnet50", "optimizer": _OPT, "state_dict": {
        **_prefixed("module.encoder_q.", _no_fc(sd)),
        **_head("module.encoder_q.fc.0.weight", "module.encoder_q.fc.0.bias", "module.encoder_q.fc.2.weight",
                "module.encoder_q.fc.2.bias"),
        **_prefixed("module.encoder_k.", _other(sd)),
        "module.queue": torch.randn(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}}, "state_dict"),
    ("mocov3", "full"): (lambda sd: {"epoch": 1000, "arch": "resnet50", "optimizer": _OPT, "scaler": {"scale": 1.0},
                                     "state_dict": {
        **_prefixed("module.base_encoder.", _no_fc(sd)),
        **_head("module.base_encoder.fc.0.weight", "module.base_encoder.fc.1.running_mean",
                "module.base_encoder.fc.6.weight", "module.predictor.0.weight", "module.predictor.1.running_var"),
        **_prefixed("module.momentum_encoder.", _other(sd))}}, "state_dict"),
    ("simsiam", "full"): (lambda sd: {"epoch": 100, "arch": "resnet50", "optimizer": _OPT, "state_dict": {
        **_prefixed("module.encoder.", _no_fc(sd)),
        **_head("module.encoder.fc.0.weight", "module.encoder.fc.1.weight", "module.encoder.fc.6.bias",
                "module.predictor.0.weight", "module.predictor.3.bias")}}, "state_dict"),
    ("byol", "backbone"): (lambda sd: {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, None),
    ("swav", "full"): (lambda sd: {
        **_prefixed("module.", _no_fc(sd)),
        **_head("module.projection_head.0.weight", "module.projection_head.1.running_mean",
                "module.projection_head.3.weight", "module.prototypes.weight")}, None),
    ("swav", "training"): (lambda sd: {"epoch": 800, "optimizer": _OPT, "state_dict": {
        **_prefixed("module.", _no_fc(sd)), **_head("module.projection_head.0.weight", "module.prototypes.weight")}},
                           "state_dict"),
    ("dino", "backbone"): (lambda sd: _no_fc(sd), None),
    ("dino", "full"): (lambda sd: {
        "student": {**_prefixed("module.backbone.", _other(_no_fc(sd))), **_head("module.head.mlp.0.weight")},
        "teacher": {**_prefixed("module.backbone.", _no_fc(sd)),
                    **_head("module.head.mlp.0.weight", "module.head.last_layer.weight_g",
                            "module.head.last_layer.weight_v")},
        "optimizer": _OPT, "epoch": 800, "args": argparse.Namespace(arch="resnet50", lr=0.3, out_dim=60000),
        "dino_loss": {"center": torch.zeros(1, 8)}}, "teacher"),
    ("barlowtwins", "backbone"): (lambda sd: _no_fc(sd), None),
    ("barlowtwins", "full"): (lambda sd: {"epoch": 1000, "optimizer": _OPT, "model": {
        **_prefixed("module.backbone.", _no_fc(sd)),
        **_head("module.projector.0.weight", "module.projector.1.running_var", "module.projector.6.weight",
                "module.bn.running_mean", "module.bn.running_var")}}, "model"),
    ("vicreg", "backbone"): (lambda sd: _no_fc(sd), None),
    ("vicreg", "full"): (lambda sd: {"epoch": 1000, "optimizer": _OPT, "model": {
        **_prefixed("module.backbone.", _no_fc(sd)),
        **_head("module.projector.0.weight", "module.projector.1.running_mean", "module.projector.6.weight")}},
                         "model"),
}


def _write(tmp_path, ref, method, layout, fmt, name=None):
    build, container = LAYOUTS[(method, layout)]
    obj = build(ref["sd"])
    if fmt == "safetensors":  # what convert_to_safetensors writes: the container's tensors, flat
        path = tmp_path / (name or f"{method}-{layout}.safetensors")
        flat = obj[container] if container else obj
        save_file({k: v.contiguous() for k, v in flat.items()}, str(path))
    else:
        path = tmp_path / (name or f"{method}-{layout}.pth.tar")
        torch.save(obj, path)
    return path


def test_every_method_has_a_layout_case_and_the_registry_is_consistent():
    assert {m for m, _ in LAYOUTS} == set(C.REGISTRY) and set(METHODS) <= set(C.REGISTRY)
    for method, layout in LAYOUTS:
        assert layout in {lay.name for lay in C.REGISTRY[method].layouts}, (method, layout)
    table = C.registry_table()
    assert list(table["method"]) == list(C.REGISTRY)
    assert table["file_name"].is_unique  # one checkpoint_root holds them all
    assert table.loc[table.method == "simclr", "normalization"].item().startswith("none")
    assert table["url"].str.startswith("https://").all()


# Every layout as .pth and as .safetensors; SwAV's training checkpoint flattened is its flat "full" file: not twice.
CASES = [(m, lay, fmt) for (m, lay) in LAYOUTS for fmt in ("pth", "safetensors")
         if (m, lay, fmt) != ("swav", "training", "safetensors")]


@pytest.mark.parametrize("method,layout,fmt", CASES)
def test_official_layout_loads_back_to_identical_features(tmp_path, ref, method, layout, fmt):
    path = _write(tmp_path, ref, method, layout, fmt)
    model = C.load_backbone(method, path, tf_same_padding=False)  # torchvision padding: comparable with the reference
    assert model.feat_dim == 2048 and not model.training
    assert model.checkpoint_info["layout"] == layout
    with torch.no_grad():
        out = model(ref["x"])
    expected = ref["feats"]["none" if method == "simclr" else "imagenet"]  # SimCLR v1 takes unnormalized inputs
    assert out.shape == (2, 2048)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_normalization_is_inside_and_simclr_is_not_normalized(tmp_path, ref):
    # The two references differ, so a SimCLR model that normalized (or a supervised one that did not) would fail above.
    assert (ref["feats"]["none"] - ref["feats"]["imagenet"]).abs().max() > 1e-2
    model = C.load_backbone("simclr", _write(tmp_path, ref, "simclr", "converted", "pth"))
    assert isinstance(model.normalize, nn.Identity)
    model = C.load_backbone("supervised", _write(tmp_path, ref, "supervised", "backbone", "pth"))
    with torch.no_grad():
        fmap = model.feature_map(ref["x"])
    assert fmap.shape == (2, 2048, 2, 2)
    torch.testing.assert_close(fmap, ref["fmap"], rtol=0, atol=0)


def test_byol_uses_tf_same_padding_by_default(tmp_path, ref):
    path = _write(tmp_path, ref, "byol", "backbone", "pth")
    model = C.load_backbone("byol", path)
    assert model.checkpoint_info["tf_same_padding"]
    net = model.backbone.net
    x = model.normalize(ref["x"])
    with torch.no_grad():  # TF SAME on even sizes pads (2, 3) for the 7x7/2 stem and (0, 1) for 3x3/2 and the max-pool
        stem = net.conv1(x)
        torch.testing.assert_close(stem, nn.functional.conv2d(nn.functional.pad(x, (2, 3, 2, 3)), net.conv1.weight,
                                                              stride=2))
        pooled = net.maxpool(stem)
        torch.testing.assert_close(pooled, nn.functional.max_pool2d(
            nn.functional.pad(stem, (0, 1, 0, 1), value=float("-inf")), 3, 2))
        y = torch.rand(1, 128, 16, 16)
        conv = net.layer2[0].conv2
        torch.testing.assert_close(conv(y), nn.functional.conv2d(nn.functional.pad(y, (0, 1, 0, 1)), conv.weight,
                                                                 stride=2))
        out = model(ref["x"])
    assert out.shape == (2, 2048)
    assert (out - ref["feats"]["imagenet"]).abs().max() > 1e-3  # the padding changes the features


def test_file_of_another_method_fails_with_the_keys_listed(tmp_path, ref):
    swav = _write(tmp_path, ref, "swav", "full", "pth")
    with pytest.raises(C.CheckpointKeyError) as err:
        C.load_backbone("mocov2", swav)
    msg = str(err.value)
    assert "missing keys" in msg and "conv1.weight" in msg and "more)" in msg
    assert "unexpected keys" in msg and "module.conv1.weight" in msg
    assert "swav" in msg and "wrong method" in msg and "moco_v2_800ep_pretrain.pth.tar" in msg
    backbone = [k for k in ref["sd"] if not k.startswith("fc.")]
    required = [k for k in backbone if not k.endswith("num_batches_tracked")]
    assert sorted(err.value.missing) == sorted(required)
    assert len(err.value.unexpected) == len(backbone) + 4  # every module.* key, heads included (not MoCo's heads)

    dino_full = _write(tmp_path, ref, "dino", "full", "pth")
    with pytest.raises(C.CheckpointKeyError) as err:
        C.load_backbone("barlowtwins", dino_full)
    msg = str(err.value)
    assert "no 'model' entry" in msg and "student, teacher" in msg and "dino (full)" in msg

    with pytest.raises(C.CheckpointKeyError) as err:  # right layout, wrong arch
        C.load_backbone("supervised", _write(tmp_path, ref, "supervised", "backbone", "pth"), arch="resnet18")
    assert "wrong shape" in str(err.value) and "arch" in str(err.value)


class _WritesMarker:
    """Unpickling this object opens (creates) a file: stands in for any code a malicious checkpoint would run."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path, ref):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_WritesMarker(control))).close()
    assert control.exists()  # the payload is live: plain unpickling runs it

    marker = tmp_path / "marker"
    obj = LAYOUTS[("mocov2", "full")][0](ref["sd"])
    obj["arch"] = _WritesMarker(marker)
    path = tmp_path / "moco.pth.tar"
    torch.save(obj, path)
    with pytest.raises(C.UnsafeCheckpointError) as err:
        C.load_backbone("mocov2", path)
    assert not marker.exists()
    msg = str(err.value)
    assert "untrusted" in msg and "open" in msg and "convert_to_safetensors" in msg and "trusted=True" in msg


class TrainingConfig:
    """A harmless custom class, as some training scripts pickle: weights_only refuses it all the same."""

    def __init__(self, lr):
        self.lr = lr


def test_trusted_file_converts_to_safetensors_and_loads(tmp_path, ref):
    obj = LAYOUTS[("mocov2", "full")][0](ref["sd"])
    obj["config"] = TrainingConfig(0.03)
    path = tmp_path / "moco_v2_800ep_pretrain.pth.tar"
    torch.save(obj, path)
    with pytest.raises(C.UnsafeCheckpointError):
        C.load_backbone("mocov2", path)
    with pytest.raises(C.UnsafeCheckpointError):
        C.convert_to_safetensors(path, method="mocov2")  # not without trusted=True
    out = C.convert_to_safetensors(path, method="mocov2", trusted=True)
    assert out == tmp_path / "moco_v2_800ep_pretrain.safetensors"
    assert C.checkpoint_path("mocov2", tmp_path) == out  # preferred over the pickle
    model = C.load_backbone("mocov2", tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ref["x"]), ref["feats"]["imagenet"], rtol=0, atol=0)


def test_sha256_is_checked(tmp_path, ref):
    path = _write(tmp_path, ref, "dino", "backbone", "pth")
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    assert store.file_sha256(path, chunk_bytes=4096) == actual  # the one file digest, read in chunks
    wrong = ("0" if actual[0] != "0" else "1") + actual[1:]
    with pytest.raises(C.ChecksumMismatchError) as err:
        C.load_backbone("dino", path, sha256=wrong)
    assert wrong in str(err.value) and actual in str(err.value) and str(path) in str(err.value)
    assert C.load_backbone("dino", path, sha256=actual).checkpoint_info["sha256_checked"] == actual

    # The registry's digest applies to a file carrying the official name: a random file there is not the official one.
    official = _write(tmp_path, ref, "supervised", "backbone", "pth", name=C.REGISTRY["supervised"].file_name)
    with pytest.raises(C.ChecksumMismatchError) as err:
        C.load_backbone("supervised", tmp_path)
    assert err.value.expected == C.REGISTRY["supervised"].sha256
    assert C.load_backbone("supervised", official, sha256=False).checkpoint_info["sha256_checked"] is None


def test_missing_or_broken_file_errors_name_the_fix(tmp_path, ref):
    with pytest.raises(C.CheckpointNotFoundError) as err:
        C.checkpoint_path("dino", tmp_path / "nowhere")
    msg = str(err.value)
    assert "checkpoint_root" in msg and "dino_resnet50_pretrain.pth" in msg and C.REGISTRY["dino"].url in msg
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(C.CheckpointNotFoundError, match="checkpoint_root"):
        C.checkpoint_path("vicreg", None)
    with pytest.raises(C.CheckpointNotFoundError, match="checkpoint_root"):
        C.load_backbone("swav", tmp_path / "swav.pth")
    with pytest.raises(ValueError, match="barlowtwins"):
        C.load_backbone("moco", tmp_path)

    good = _write(tmp_path, ref, "vicreg", "backbone", "pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:4096])
    with pytest.raises(C.CheckpointError, match="corrupt or truncated") as err:
        C.load_backbone("vicreg", truncated)
    assert not isinstance(err.value, C.UnsafeCheckpointError)


def test_nothing_trained_here_means_the_official_files_under_checkpoint_root(tmp_path, ref):
    """`paper` trains nothing (epochs = n_pretrain = 0): notebook 01's encoders are the official files, read from the
    `checkpoint_root` passed (or the one in the 01 parameters); any profile whose 01 parameters train nothing does."""
    _write(tmp_path, ref, "dino", "backbone", "pth", name=C.REGISTRY["dino"].file_name)
    _write(tmp_path, ref, "vicreg", "backbone", "safetensors", name="vicreg_resnet50.safetensors")
    out = encoders.pretrained_encoders("paper", ["dino", "vicreg"], checkpoint_root=tmp_path,
                                       cache_dir=tmp_path / "cache", record=True)
    assert list(out) == ["dino", "vicreg"]
    assert out["dino"][1] == {"method": "dino", "path": str(tmp_path / "dino_resnet50_pretrain.pth"), "from_cache": True,
                              "sha256_verified": True}
    assert out["vicreg"][1]["path"] == str(tmp_path / "vicreg_resnet50.safetensors")
    params01 = {"epochs": 0, "n_pretrain": 0, "checkpoint_root": str(tmp_path)}
    # later notebooks read the files notebook 01 recorded (with their sha256), not the profile's checkpoint_root
    loaded = encoders.load_encoders("paper", ["dino"], device="cpu", cache_dir=tmp_path / "cache")
    for model in (out["dino"][0], out["vicreg"][0], loaded["dino"][0],
                  encoders.pretrained_encoders("smoke", ["dino"], params01=params01)["dino"][0]):
        assert not model.training
        with torch.no_grad():
            torch.testing.assert_close(model(ref["x"]), ref["feats"]["imagenet"], rtol=0, atol=0)


# ------------------------------------------------------------------------------------- the checkpoint's own classifier
def test_official_classifier_keeps_the_supervised_fc_and_only_that(tmp_path, ref):
    """The supervised file's ImageNet classifier comes back as encoder + its own fc: the reference logits on [0, 1]
    inputs, normalization inside, from the pickled and the safetensors file; methods with no published classifier
    and backbone-only files are refused with the reason."""
    expected = ref["feats"]["imagenet"] @ ref["sd"]["fc.weight"].T + ref["sd"]["fc.bias"]
    for fmt in ("pth", "safetensors"):
        clf = C.load_official_classifier("supervised", _write(tmp_path, ref, "supervised", "backbone", fmt))
        assert not clf.training and clf.head.out_features == 1000 and C.REGISTRY["supervised"].fc_top1 == 76.13
        with torch.no_grad():
            torch.testing.assert_close(clf(ref["x"]), expected)
    with pytest.raises(C.CheckpointKeyError, match="no published classifier"):
        C.load_official_classifier("simclr", _write(tmp_path, ref, "simclr", "converted", "pth"))
    no_fc = tmp_path / "supervised-no-fc.pth"
    torch.save(_no_fc(ref["sd"]), no_fc)
    with pytest.raises(C.CheckpointKeyError, match="holds no classifier") as e:
        C.load_official_classifier("supervised", no_fc)
    assert e.value.missing == ["fc.weight", "fc.bias"]
    assert C.load_backbone("supervised", no_fc).feat_dim == 2048  # the backbone alone still loads


def test_imagenet_fc_labels_map_wordnet_folders_to_the_1000_outputs():
    assert C.imagenet_fc_labels(["n01440764", "n01443537", "n15075141"]) == [0, 1, 999]  # tench, goldfish, toilet tissue
    assert C.imagenet_fc_labels(["n01443537", "cat"]) is None  # a folder not named by its WordNet id


def test_own_classifier_rows_score_wordnet_folders_and_flag_the_others():
    """probe.with_own_classifiers: the fc's 1000 outputs are read through the folders' WordNet ids (a model that
    always answers 'goldfish' (output 1) is right exactly on the goldfish images, label 0 here); folders not named by WordNet ids
    give a NaN accuracy with the flag fc_unscored, never a number scored against the wrong labels."""
    import pandas as pd

    from utils import probe

    class Goldfish(nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 1000)
            out[:, 1] = 1.0
            return out

    y = torch.tensor([0, 1, 1, 0, 1])
    task = {"task": "imagenet", "x_test": torch.rand(5, 3, 8, 8), "y_test": y,
            "classes": ["n01443537", "n15075141"]}  # label 0 goldfish (output 1), label 1 toilet tissue (999)
    base = pd.DataFrame([{"model": "supervised", "regime": "linear", "task": "imagenet", "accuracy": 0.5, "n": 5}])
    out = probe.with_own_classifiers(base, {"supervised": Goldfish()}, task)
    row = out[out.regime == probe.OWN_FC_REGIME].iloc[0]
    assert row.accuracy == pytest.approx(0.4) and row["flags"] == "" and row["n"] == 5  # 0.6 if read unmapped
    out = probe.with_own_classifiers(base, {"supervised": Goldfish()}, {**task, "classes": ["fish", "goldfish"]})
    row = out[out.regime == probe.OWN_FC_REGIME].iloc[0]
    assert pd.isna(row.accuracy) and row["flags"] == probe.FC_UNSCORED
    assert probe.with_own_classifiers(base, {}, task) is base

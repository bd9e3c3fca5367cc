"""The robustness card (`python -m utils.card`): a smoke-sized card whose every field is checked against direct calls
of the suite's functions (same points, seed and settings), its page and plot, and the refusals."""
import contextlib
import io
import json

import pytest
import torch
import torchvision

from utils import attacks
from utils.card import SIZES, UNRELIABLE_FLAGS, CardError, load_card_encoder, suite_encoder_path
from utils.card.__main__ import main, parse_eps
from utils.card.inputs import adapt, load_card_data
from utils.card.run import baseline_numbers
from utils.config import notebook_parameters
from utils.data import load_fashion_mnist
from utils.models import build_encoder
from utils.pretrain import encoder_paths, load_encoder, save_encoder, training_params
from utils.probe import accuracy, linear_probe
from utils.robustness import BLACKBOX_TOLERANCE, convergence_run
from utils.store import file_sha256, points_digest, weights_digest

S = SIZES["smoke"]


def _encoder_file(path, seed):
    torch.manual_seed(seed)
    return save_encoder(build_encoder("resnet_micro"), path)


@pytest.fixture(scope="module")
def card(tmp_path_factory, data_root):
    """A smoke card of a random resnet_micro encoder with another random one as the baseline, made by the command."""
    tmp = tmp_path_factory.mktemp("card")
    enc, base = _encoder_file(tmp / "enc.safetensors", 0), _encoder_file(tmp / "base.safetensors", 1)
    argv = ["--encoder", str(enc), "--method", "random-init", "--data", "fashion_mnist", "--size", "smoke",
            "--baseline", str(base), "--cache", str(tmp / "cache"), "--out", str(tmp / "out"), "--data-root",
            data_root, "--no-progress"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(argv) == 0
    out = tmp / "out"
    return {"json": json.loads((out / "card.json").read_text()), "md": (out / "card.md").read_text(),
            "log": err.getvalue(), "png": out / "card.png", "enc": enc, "base": base, "tmp": tmp}


@pytest.fixture(scope="module")
def direct(card, data_root):
    """The same numbers from direct calls: data loader, probe, accuracy, the AutoAttack ensemble, convergence."""
    x_tr, y_tr = load_fashion_mnist(data_root, "train", S.n_train, S.seed)
    x_te, y_te = load_fashion_mnist(data_root, "test", S.n_test, S.seed)
    out = {"x_tr": x_tr, "y_tr": y_tr, "x_te": x_te, "y_te": y_te}
    for who in ("enc", "base"):
        enc = load_encoder("resnet_micro", card[who])
        clf = linear_probe(enc, x_tr, y_tr, 10, iters=S.probe_iters, seed=S.seed)
        res = attacks.robust_accuracy(clf, x_te, y_te, eps_list=[0, *S.eps], attack="autoattack", steps=S.steps,
                                      restarts=S.restarts, n_targets=S.n_targets, n_queries=S.n_queries,
                                      batch_size=S.batch_size, seed=S.seed)
        out[who] = {"encoder": enc, "clf": clf, "clean": accuracy(clf, x_te, y_te), "res": res}
    return out


def test_card_numbers_equal_direct_computation(card, direct):
    c, d = card["json"], direct["enc"]
    res = d["res"]
    assert c["clean_acc"] == d["clean"]
    assert [r["eps"] for r in c["robust_acc"]] == res.eps == sorted([0.0, *S.eps])
    assert c["robust_acc"][0]["accuracy"] == d["clean"]  # AutoAttack's sanity check: eps 0 is the clean accuracy
    sq = res.members.index("square")
    for j, (row, eps) in enumerate(zip(c["robust_acc"], res.eps)):
        by = res.fooled_by[j]
        assert row["accuracy"] == res[eps]
        assert row["eps_255"] == pytest.approx(eps * 255)
        assert row["fooled_by"] == res.fooled_by_counts()[eps]
        assert row["wrong_clean"] == int((by == attacks.WRONG_CLEAN).sum())
        assert row["square_only"] == float((by == sq).float().mean())
        for k, m in enumerate(res.members):
            left = float((~torch.isin(by, torch.tensor([attacks.WRONG_CLEAN, *range(k + 1)], dtype=by.dtype)))
                         .float().mean())
            assert row["accuracy_after"][m] == left
        assert row["accuracy_after"][res.members[-1]] == res[eps]
    a = c["attack"]
    assert (a["name"], a["members"], a["norm"], a["steps"], a["restarts"], a["n"]) == \
        ("autoattack", res.members, "linf", S.steps, S.restarts, S.n_test)
    assert (a["n_targets"], a["n_queries"], a["batch_size"], a["seed"]) == \
        (S.n_targets, S.n_queries, S.batch_size, S.seed)
    assert c["threat_model"] == "Linf" and c["norm"] == "linf" and "[0, 1]" in c["eps_units"]


def test_card_convergence_equals_convergence_run(card, direct):
    conv, res = card["json"]["convergence"], direct["enc"]["res"]
    eps, n = S.conv_eps(), min(S.convergence_n, S.n_test)
    reference = float(res.robust_mask[res.eps.index(eps), :n].float().mean())
    rows = convergence_run(direct["enc"]["clf"], direct["x_te"][:n], direct["y_te"][:n], model="x", task="y",
                           eps=eps, schedule=list(S.schedule), reference=reference, seed=S.seed)
    assert (conv["eps"], conv["n"], conv["reference"], conv["attack"]) == (eps, n, reference, "apgd-ce")
    assert [(r["steps"], r["restarts"], r["accuracy"]) for r in conv["rows"]] == \
        [(r["steps"], r["restarts"], r["accuracy"]) for r in rows]
    assert conv["converged"] == (attacks.NOT_CONVERGED not in rows[-1]["flags"])
    assert conv["strongest_minus_reference"] == rows[-1]["accuracy"] - reference


def test_card_baseline_flags_and_unreliable(card, direct):
    c, b, res = card["json"], direct["base"], direct["enc"]["res"]
    base = c["baseline"]
    assert base["clean_acc"] == b["clean"] and not base["from_cache"]
    assert [r["accuracy"] for r in base["robust_acc"]] == list(b["res"].values())
    assert [g["gap"] for g in base["gap"]] == [res[e] - b["res"][e] for e in res.eps]
    assert base["sha256"] == file_sha256(card["base"])
    sq = res.members.index("square")
    masking = [j for j in range(len(res.eps)) if float((res.fooled_by[j] == sq).float().mean()) > BLACKBOX_TOLERANCE]
    assert len([f for f in c["flags"] if attacks.flag_name(f) == attacks.BLACKBOX_BEATS_WHITEBOX]) == len(masking)
    for f in res.flags:
        assert f in c["flags"]
    assert c["flag_names"] == sorted({attacks.flag_name(f) for f in c["flags"]})
    assert c["unreliable"] == any(n in UNRELIABLE_FLAGS for n in c["flag_names"])
    assert c["unreliable_because"] == [n for n in c["flag_names"] if n in UNRELIABLE_FLAGS]


def test_card_encoder_data_timing_provenance(card, direct):
    c = card["json"]
    e, d = c["encoder"], c["data"]
    assert (e["source"], e["method"], e["arch"], e["path"]) == ("file", "random-init", "resnet_micro", str(card["enc"]))
    assert e["sha256"] == file_sha256(card["enc"]) and e["weights_digest"] == weights_digest(direct["enc"]["encoder"])
    assert e["checked"].startswith("sha256 in its header")
    assert (d["spec"], d["task"], d["n_train"], d["n_test"], d["n_classes"], d["image_shape"], d["seed"]) == \
        ("fashion_mnist", "fashion_mnist", S.n_train, S.n_test, 10, [1, 28, 28], S.seed)
    assert d["train_points_sha256"] == points_digest(direct["x_tr"], direct["y_tr"])
    assert d["test_points_sha256"] == points_digest(direct["x_te"], direct["y_te"])
    assert c["evaluation"]["probe_iters"] == S.probe_iters and c["evaluation"]["regime"] == "linear"
    t = c["timing"]
    assert set(t["stages_s"]) == {"timing probe", "linear probe", "clean accuracy", "autoattack", "convergence",
                                  "baseline"}
    assert t["estimate_s"] > 0 and t["total_s"] >= sum(t["stages_s"].values()) - 0.5
    assert set(t["estimate_stages_s"]) == {"linear probe", "clean accuracy", "autoattack", "convergence", "baseline"}
    p = c["provenance"]
    assert p["seed"] == S.seed and p["git_commit"] and "torch" in p["versions"]
    assert p["command"].startswith("python -m utils.card --encoder") and "--size smoke" in p["command"]


def test_the_estimate_comes_first_and_says_how_it_was_measured(card):
    log = card["log"]
    assert log.index("estimated time: about") < log.index("card written to")
    assert "measured before the run" in log and f"{S.n_test} test points" in log


def test_card_page_states_every_number(card):
    c, md = card["json"], card["md"]
    numbers = [c["clean_acc"]] + [r["accuracy"] for r in c["robust_acc"]] + \
        [v for r in c["robust_acc"] for v in r["accuracy_after"].values()] + \
        [r["square_only"] for r in c["robust_acc"]] + [c["baseline"]["clean_acc"]] + \
        [r["accuracy"] for r in c["baseline"]["robust_acc"]] + \
        [c["convergence"]["reference"]] + [r["accuracy"] for r in c["convergence"]["rows"]]
    for v in numbers:
        assert f"{v:.3f}" in md
    for g in [g["gap"] for g in c["baseline"]["gap"]] + [c["convergence"]["strongest_minus_reference"]]:
        assert f"{g:+.3f}" in md
    for r in c["robust_acc"][1:]:
        assert f"| {r['eps_255']:g}/255 |" in md
    assert "| 0 (clean) |" in md
    for words in (f"steps {S.steps}", f"restarts {S.restarts}", f"n = {S.n_test}", f"{S.n_queries} Square queries",
                  f"{S.n_train} training", "## Flags", "## What was run", "card.png", c["provenance"]["command"]):
        assert words in md
    assert ("UNRELIABLE" in md) == c["unreliable"]
    assert card["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_baseline_is_cached_for_the_next_card(card, direct, data_root):
    """The next card with the same baseline, points and settings reads the baseline's numbers from the card cache."""
    d = load_card_data("fashion_mnist", n_train=S.n_train, n_test=S.n_test, seed=S.seed, data_root=data_root)
    again = baseline_numbers(direct["base"]["encoder"], d, S, card["tmp"] / "cache")
    assert again["from_cache"]
    assert {k: again[k] for k in ("clean_acc", "robust_acc", "flags")} == \
        {k: card["json"]["baseline"][k] for k in ("clean_acc", "robust_acc", "flags")}


@pytest.mark.parametrize("argv, words", [
    (["--encoder", "{tmp}/nope.pth", "--method", "simclr", "--data", "fashion_mnist"], "does not exist"),
    (["--encoder", "{tmp}/odd.pth", "--method", "simclr", "--data", "fashion_mnist"], "unknown layout"),
    (["--encoder", "{tmp}/odd.safetensors", "--method", "dino", "--data", "fashion_mnist"], "unknown layout"),
    (["--encoder", "{tmp}/odd.pth", "--method", "nosuch", "--data", "fashion_mnist"], "unknown method"),
    (["--encoder", "{tmp}/odd.pth", "--data", "fashion_mnist"], "pass --method"),
    (["--encoder", "{tmp}/enc.safetensors", "--data", "mnist"], "unknown data spec 'mnist'"),
    (["--encoder", "{tmp}/enc.safetensors", "--data", "imagefolder:{tmp}/none"], "does not exist"),
    (["--encoder", "{tmp}/enc.safetensors", "--data", "cifar10:{tmp}/none"], "nothing is downloaded"),
    (["--encoder", "timm:resnet18", "--data", "fashion_mnist"], "needs local weights"),
    (["--encoder", "suite:simclr", "--suite-cache", "{tmp}/empty", "--data", "fashion_mnist"], "run notebook 01"),
])
def test_refusals_name_the_problem(tmp_path, capsys, argv, words):
    from safetensors.torch import save_file

    torch.save({"state_dict": {"foo.weight": torch.zeros(2)}}, tmp_path / "odd.pth")
    save_file({"foo.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    _encoder_file(tmp_path / "enc.safetensors", 0)
    assert main([a.format(tmp=tmp_path) for a in argv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err, err


def test_official_and_timm_layouts_get_an_input_adapter(tmp_path):
    """An official plain-layout ResNet file and a timm model with local weights load as encoders of RGB images; on
    grey data the adapter sits inside the model, so the gradient reaches the one input channel."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    enc, info = load_card_encoder(str(tmp_path / "r18.pth"), "dino", arch="resnet18")
    assert (info["source"], info["layout"], info["method"]) == ("official checkpoint", "backbone", "dino")
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet10t", pretrained=False).state_dict(), str(tmp_path / "t.safetensors"))
    tenc, tinfo = load_card_encoder("timm:resnet10t", weights=str(tmp_path / "t.safetensors"))
    assert tinfo["source"] == "timm" and tinfo["sha256"] == file_sha256(tmp_path / "t.safetensors")
    for e in (enc, tenc):
        model, adapted = adapt(e, 1, 28)
        assert "1 -> 3 channels" in adapted["input_adapter"]
        x = torch.rand(2, 1, 28, 28, requires_grad=True)
        model(x).sum().backward()
        assert x.grad.abs().sum() > 0
    save_file({"foo": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CardError, match="unknown layout"):
        load_card_encoder("timm:resnet10t", weights=str(tmp_path / "bad.safetensors"))


def test_suite_encoder_is_found_by_notebook_01_parameters(tmp_path):
    p = notebook_parameters("smoke", "01")
    params = training_params("simclr", arch=p["arch"], n_pretrain=p["n_pretrain"], epochs=p["epochs"],
                             batch_size=p["batch_size"], lr=p["lr"], augmentations=p["augmentations"], seed=p["seed"])
    path = encoder_paths(tmp_path, params)["encoder"]
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_encoder(build_encoder(p["arch"]), path)
    assert suite_encoder_path("simclr", "smoke", tmp_path) == path
    enc, info = load_card_encoder("suite:simclr", profile="smoke", suite_cache=tmp_path)
    assert (info["source"], info["method"], info["arch"]) == ("suite", "simclr", p["arch"])


def test_image_folder_data(tmp_path):
    """imagefolder:ROOT reads ROOT/train and ROOT/val (one folder per class) at the asked size, labels by folder."""
    from PIL import Image

    for split, n in (("train", 3), ("val", 2)):
        for k, cls in enumerate(("cat", "dog")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 30), (100 * k, 50, 200)).save(tmp_path / split / cls / f"{i}.png")
    d = load_card_data(f"imagefolder:{tmp_path}", n_train=None, n_test=3, image_size=16)
    assert d["x_train"].shape == (6, 3, 16, 16) and d["x_test"].shape == (3, 3, 16, 16)
    assert d["n_classes"] == 2 and sorted(d["y_train"].tolist()) == [0, 0, 0, 1, 1, 1]
    assert 0 <= float(d["x_test"].min()) and float(d["x_test"].max()) <= 1
    (tmp_path / "val" / "bird").mkdir()
    Image.new("RGB", (30, 30)).save(tmp_path / "val" / "bird" / "0.png")
    with pytest.raises(CardError, match="different class folders"):
        load_card_data(f"imagefolder:{tmp_path}", n_train=2, n_test=2)


def test_parse_eps():
    assert parse_eps("1/255, 4/255") == (1 / 255, 4 / 255)
    assert parse_eps("0.5") == (0.5,)

"""Dense tasks: Fashion scenes are exact, the detector/segmenter recipe is sound, the attacks do what they claim."""
import pandas as pd
import pytest
import torch

from utils import attacks, dense, runtime, scenes, stats
from utils.config import DENSE_REGIME
from utils.data import DataMissingError, load_fashion_mnist
from utils.models import build_encoder
from utils.probe import extract_features

CANVAS = 64


@pytest.fixture(scope="module")
def items(data_root):
    return load_fashion_mnist(data_root, "test", n=200, seed=3)


def _placed(item: torch.Tensor, top: int, left: int) -> torch.Tensor:
    out = torch.zeros(item.shape[0], CANVAS, CANVAS)
    out[:, top:top + item.shape[1], left:left + item.shape[2]] = item
    return out


def test_boxes_masks_and_pixels_are_those_of_the_placed_items(items):
    x, y = items
    sc = scenes.compose_scenes(x, y, 40, canvas=CANVAS, seed=1, max_items=4, mask_threshold=0.1)
    n_items = 0
    for s in range(len(sc)):
        ids, offsets = sc.source["item_ids"][s], sc.source["offsets"][s]
        assert 1 <= len(ids) <= 4 and len(sc.boxes[s]) == len(sc.labels[s]) == len(ids)
        image, mask = torch.zeros(1, CANVAS, CANVAS), torch.zeros(CANVAS, CANVAS, dtype=torch.int64)
        for j, (i, (top, left)) in enumerate(zip(ids.tolist(), offsets.tolist())):
            placed = _placed(x[i], top, left)
            rows, cols = torch.nonzero(placed[0] > 0, as_tuple=True)
            tight = [cols.min().item(), rows.min().item(), cols.max().item() + 1, rows.max().item() + 1]
            assert sc.boxes[s][j].tolist() == tight, f"scene {s} item {j}: box is not the tight box of its pixels"
            assert sc.labels[s][j].item() == y[i].item() + 1
            image += placed
            mask[placed[0] > 0.1] = y[i] + 1
        assert torch.equal(sc.images[s], image), f"scene {s}: the canvas is not the sum of its placed items"
        assert torch.equal(sc.masks[s], mask), f"scene {s}: mask differs from the items' pixels above threshold"
        n_items += len(ids)
    used = torch.cat(sc.source["item_ids"])
    assert len(used.unique()) == len(used), "an item was used twice"
    assert n_items >= 1.5 * len(sc), "scenes should mostly hold several items"


def test_scenes_are_deterministic_by_seed(items):
    x, y = items
    a, b, c = (scenes.compose_scenes(x, y, 20, canvas=CANVAS, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    assert all(torch.equal(p, q) for p, q in zip(a.boxes, b.boxes))
    assert not torch.equal(a.images, c.images)


def test_train_and_test_scenes_hold_items_of_their_own_split(data_root):
    for split in ("train", "test"):
        sc = scenes.fashion_scenes(split, 25, canvas=CANVAS, seed=0, data_root=data_root)
        assert sc.source["split"] == split
        x_all, y_all = load_fashion_mnist(data_root, split)
        for s in range(len(sc)):
            for j, (i, (top, left)) in enumerate(zip(sc.source["item_ids"][s].tolist(),
                                                     sc.source["offsets"][s].tolist())):
                window = sc.images[s, :, top:top + 28, left:left + 28]
                fg = x_all[i] > 0
                assert torch.equal(window[fg], x_all[i][fg]), f"{split} scene {s}: item {i} is not from {split}"
                assert sc.labels[s][j] == y_all[i] + 1
    tr = scenes.fashion_scenes("train", 25, canvas=CANVAS, seed=0, data_root=data_root)
    te = scenes.fashion_scenes("test", 25, canvas=CANVAS, seed=0, data_root=data_root)
    assert not torch.equal(tr.images, te.images)


def test_pgd_objective_reaches_the_corner_of_the_ball_for_a_linear_loss():
    """The PGD loop the dense attacks run (`attacks.pgd_objective`, default step 2.5 eps / steps)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 1, 8, 8, generator=g)
    w = torch.randn(4, 1, 8, 8, generator=g)
    eps = 0.1
    x_adv = attacks.pgd_objective(lambda xa, t: (xa * w).sum(), x, eps=eps, steps=4, seed=1)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    # total travel 2.5 eps >= the 2 eps needed from any random start: every pixel ends on the ascent corner
    assert torch.allclose(x_adv, (x + eps * w.sign()).clamp(0, 1), atol=1e-6)
    assert torch.equal(attacks.pgd_objective(lambda xa, t: (xa * w).sum(), x, eps=0.0, steps=4), x)


def test_segpgd_loss_moves_weight_from_correct_to_wrong_pixels():
    logits = torch.tensor([[[[2.0, 0.0]], [[0.0, 1.0]]]])  # [1, 2 classes, 1, 2 pixels]; predictions 0, 1
    masks = torch.tensor([[[0, 0]]])  # pixel 0 correct, pixel 1 wrong
    ce = torch.nn.functional.cross_entropy(logits, masks, reduction="none").flatten()
    assert dense.segpgd_loss(logits, masks, 0, 10, None).item() == pytest.approx(ce[0].item())
    assert dense.segpgd_loss(logits, masks, 5, 10, None).item() == pytest.approx(0.75 * ce[0] + 0.25 * ce[1])
    assert dense.segmentation_ce(logits, masks, None).item() == pytest.approx(ce.sum().item())


@pytest.fixture(scope="module")
def trained(data_root):
    """A random-init encoder with quickly trained small heads (what the heads learn is enough to be attacked)."""
    torch.manual_seed(0)
    train = scenes.fashion_scenes("train", 128, canvas=CANVAS, seed=0, data_root=data_root)
    test = scenes.fashion_scenes("test", 32, canvas=CANVAS, seed=0, data_root=data_root)
    enc = build_encoder("resnet_micro").eval()
    det = dense.build_detector(enc, train.num_classes, CANVAS, channels=32, num_convs=1)
    seg = dense.build_segmenter(enc, train.num_classes, hidden=32)
    feats = extract_features(enc, train.image_batches(64), spatial=True)
    dense.train_detector(det, train, epochs=8, batch_size=16, lr=3e-3, features=feats)
    dense.train_segmenter(seg, train, epochs=24, batch_size=16, lr=1e-2, features=feats)
    return enc, det, seg, test


def _bn_state(enc):
    return {k: v.clone() for k, v in enc.state_dict().items() if "running" in k or "num_batches" in k}


def test_detection_losses_are_torchvision_train_mode_losses_and_bn_stays_frozen(trained):
    enc, det, _, test = trained
    x, targets = test.image_batch(slice(0, 6)), test.targets(range(6))
    images, _ = det.transform(list(x))
    assert torch.equal(images.tensors, x), "the detector's transform must leave [0,1] canvases untouched"
    before = _bn_state(enc)
    det.train()
    assert not enc.training, "train mode must leave the encoder's BatchNorm in eval mode"
    official = det(list(x), targets)
    det.eval()
    ours = dense.detection_losses(det, x, targets)
    assert set(ours) == set(official)
    for k in ours:
        assert ours[k].item() == pytest.approx(official[k].item(), rel=1e-4, abs=1e-6), k
    after = _bn_state(enc)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_eps0_is_the_clean_evaluation_and_a_large_eps_lowers_map_and_miou(trained):
    enc, det, seg, test = trained
    before = _bn_state(enc)
    metric = dense._map_metric()
    for idx in runtime.batches(len(test), 16):
        metric.update(dense.predict_boxes(det, test.image_batch(idx)), test.targets(idx.tolist()))
    clean_map = metric.compute()["map"].item()
    miou, pacc = dense._seg_metrics(test.num_classes, None)
    pred = dense.predict_masks(seg, test.image_batch(slice(None)))
    clean_miou, clean_pacc = miou(pred, test.masks).item(), pacc(pred, test.masks).item()

    big = 32 / 255
    det_rows = {r["eps"]: r for r in dense.evaluate_detection(det, test, [0, big], steps=5, batch_size=16)}
    seg_rows = dense.evaluate_segmentation(seg, test, [0, big], steps=5, batch_size=16)
    get = {(r["attack"], r["eps"], r["metric"]): r["accuracy"] for r in seg_rows}

    assert det_rows[0]["accuracy"] == pytest.approx(clean_map, abs=1e-6)
    for attack in ("pgd", "segpgd"):
        assert get[(attack, 0.0, "miou")] == pytest.approx(clean_miou, abs=1e-6)
        assert get[(attack, 0.0, "pixel_acc")] == pytest.approx(clean_pacc, abs=1e-6)
    # The heads learned something: boxes found, and masks better than calling every pixel background.
    all_background = dense._seg_metrics(test.num_classes, None)[0](torch.zeros_like(test.masks), test.masks).item()
    assert clean_map > 0.2 and clean_miou > all_background + 0.05
    assert det_rows[big]["accuracy"] < 0.5 * clean_map
    for attack in ("pgd", "segpgd"):
        assert get[(attack, big, "miou")] < 0.7 * clean_miou
        assert get[(attack, big, "pixel_acc")] < clean_pacc
    assert all(r["flags"] == "" for r in seg_rows) and det_rows[big]["flags"] == ""
    after = _bn_state(enc)
    assert all(torch.equal(before[k], after[k]) for k in before), "the attacks changed BatchNorm statistics"


def test_dense_attacks_stay_in_the_ball_are_seeded_and_eps0_returns_the_input(trained):
    _, det, seg, test = trained
    x, m, targets = test.image_batch(slice(0, 4)), test.masks[:4], test.targets(range(4))
    eps = 4 / 255
    runs = {"detection": lambda e, s: dense.attack_detection(det, x, targets, e, 3, seed=s),
            "pgd": lambda e, s: dense.attack_segmentation(seg, x, m, e, 3, attack="pgd", seed=s),
            "segpgd": lambda e, s: dense.attack_segmentation(seg, x, m, e, 3, attack="segpgd", seed=s)}
    for name, attack in runs.items():
        x_adv = attack(eps, 2)
        assert x_adv.shape == x.shape and x_adv.dtype == torch.float32, name
        assert (x_adv - x).abs().max() <= eps + 1e-6, f"{name}: outside the eps-ball"
        assert x_adv.min() >= 0 and x_adv.max() <= 1, f"{name}: outside [0, 1]"
        assert not torch.equal(x_adv, x), f"{name}: the attack did not move"
        assert torch.equal(attack(eps, 2), x_adv), f"{name}: not deterministic in its seed"
        assert torch.equal(attack(0.0, 2), x), f"{name}: eps=0 must return the input"


def _frame(values: dict) -> pd.DataFrame:
    """values: {(task, model): [metric at eps 0, eps 1/255]} -> tidy rows with the GAP_CURVES attack and metric."""
    rows = []
    for (task, model), vals in values.items():
        attacks, metric = stats.GAP_CURVES[task]
        for eps, v in zip([0.0, 1 / 255], vals):
            for k, attack in enumerate(attacks):  # a second attack that does worse than the first
                rows.append({"task": task, "model": model, "attack": attack, "metric": metric, "eps": eps,
                             "accuracy": v + 0.1 * k * (eps > 0)})
    return pd.DataFrame(rows)


def test_gaps_and_verdict_follow_the_numbers():
    df = _frame({("classification", "supervised"): [0.8, 0.2], ("classification", "simclr"): [0.8, 0.6],
                 ("classification", "byol"): [0.8, 0.4],
                 ("detection", "supervised"): [0.5, 0.25], ("detection", "simclr"): [0.5, 0.30],
                 ("detection", "byol"): [0.4, 0.20],
                 ("segmentation", "supervised"): [0.6, 0.3], ("segmentation", "simclr"): [0.6, 0.6],
                 ("segmentation", "byol"): [0.6, 0.6]})
    gaps = stats.ssl_gaps(df).set_index(["task", "eps"])
    assert gaps.loc[("classification", 1 / 255), "gap"] == pytest.approx(0.3)
    # retained fractions: SSL (0.6/0.8 + 0.4/0.8) / 2 = 0.625, supervised 0.2/0.8 = 0.25
    assert gaps.loc[("classification", 1 / 255), "rel_gap"] == pytest.approx(0.625 - 0.25)
    assert gaps.loc[("detection", 1 / 255), "rel_gap"] == pytest.approx(0.55 - 0.5)
    assert gaps.loc[("detection", 0.0), "gap"] == pytest.approx(-0.05)
    assert gaps.loc[("segmentation", 1 / 255), "supervised"] == pytest.approx(0.3)  # the stronger attack counts
    verdict = stats.gap_verdict(gaps.reset_index())
    assert "In detection the SSL advantage shrinks" in verdict
    assert "In segmentation the SSL advantage does not shrink" in verdict
    dense_only = stats.gap_verdict(stats.ssl_gaps(df[df.task != "classification"]))
    assert "missing" in dense_only and "shrink" not in dense_only


def test_classification_rows_take_the_in_domain_task_asked_for(tmp_path):
    base = {"model": "m", "regime": "linear", "attack": "pgd", "norm": "linf", "eps": 0.0, "steps": 5,
            "restarts": 1, "accuracy": 0.9, "n": 10, "flags": ""}
    rows = [{**base, "task": "fashion_mnist"}, {**base, "task": "digits"}, {**base, "task": "digits", "norm": "l2"},
            {**base, "task": "digits", "regime": "finetuned"}, {**base, "task": "digits", "attack": "fgsm"}]
    pd.DataFrame(rows).to_csv(tmp_path / "03.csv", index=False)
    for task in ("fashion_mnist", "digits"):
        sel = stats.classification_rows(tmp_path / "03.csv", task=task)
        assert len(sel) == 1 and (sel["task"] == "classification").all() and (sel["metric"] == "accuracy").all()
    assert stats.classification_rows(tmp_path / "absent.csv", task="digits") is None


def test_voc_scenes_read_a_local_voc_tree(tmp_path):
    from PIL import Image

    base = tmp_path / "VOCdevkit" / "VOC2012"
    for d in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
        (base / d).mkdir(parents=True)
    Image.new("RGB", (40, 20), (200, 10, 10)).save(base / "JPEGImages" / "a.jpg")
    mask = Image.new("P", (40, 20), 0)
    mask.putpalette([v for i in range(256) for v in (i, i, i)])  # with a palette PNG keeps the class indices
    mask.paste(15, (10, 5, 30, 15))  # a "person" rectangle, columns 10..29, rows 5..14
    mask.save(base / "SegmentationClass" / "a.png")
    (base / "Annotations" / "a.xml").write_text(
        "<annotation><object><name>person</name><difficult>0</difficult><bndbox><xmin>11</xmin><ymin>6</ymin>"
        "<xmax>30</xmax><ymax>15</ymax></bndbox></object><object><name>dog</name><difficult>1</difficult>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>")
    for d in ("Main", "Segmentation"):
        (base / "ImageSets" / d / "train.txt").write_text("a\n")
    det_sc, seg_sc = scenes.load_dense_data("voc", "train", n_scenes=0, canvas=80, voc_root=str(tmp_path))
    assert det_sc.images.shape == (1, 3, 80, 80) and det_sc.masks is None
    red = det_sc.image_batch([0])[0]  # decoded from the file when used (JPEG: close to the colour it was saved in)
    assert red.shape == (3, 80, 80) and abs(float(red[0].mean()) - 200 / 255) < 0.03 and float(red[1].mean()) < 0.1
    # 1-based inclusive (11..30, 6..15) -> edges (10, 5, 30, 15), scaled by 80/40 and 80/20; the difficult dog dropped
    assert det_sc.boxes[0].tolist() == [[20.0, 20.0, 60.0, 60.0]]
    assert det_sc.labels[0].tolist() == [scenes.VOC_CLASSES.index("person")]
    assert seg_sc.ignore_index == 255 and seg_sc.masks.shape == (1, 80, 80) and seg_sc.masks.dtype == torch.uint8
    assert (seg_sc.mask_batch([0])[0] == 15).sum().item() == 40 * 40
    with pytest.raises(DataMissingError, match="voc_root"):
        scenes.load_dense_data("voc", "train", n_scenes=0, canvas=80, voc_root=str(tmp_path / "nowhere"))


def test_run_dense_all_runs_every_encoder_and_tags_its_rows(data_root, monkeypatch):
    monkeypatch.setenv("SSL_ADV_WORKERS", "1")  # the plumbing, in this process (the pool is tested elsewhere)
    kw = dict(canvas=CANVAS, data_root=data_root)
    train = scenes.load_dense_data("fashion_scenes", "train", n_scenes=16, **kw)
    test = scenes.load_dense_data("fashion_scenes", "test", n_scenes=8, **kw)
    torch.manual_seed(0)
    encs = {"supervised": build_encoder("resnet_micro").eval(), "simclr": build_encoder("resnet_micro").eval()}
    runs, rows = dense.run_dense_all(encs, train, test, det_epochs=1, seg_epochs=1, eps_linf=[0, 8 / 255], steps=2,
                                     batch_size=8)
    assert list(runs) == list(encs)
    for method, run in runs.items():
        assert run.segmenter.encoder is encs[method] and set(run.history) == {"detection", "segmentation"}
        mine = [r for r in rows if r["model"] == method]
        assert mine == dense.tidy_rows(run.rows, method) and len(mine) == 2 + 2 * 2 * 2
    assert {r["regime"] for r in rows} == {DENSE_REGIME}


def test_to_frame_flags_a_metric_that_rises_with_eps():
    rows = [{"model": "m", "regime": DENSE_REGIME, "task": "segmentation", "attack": "pgd", "norm": "linf",
             "eps": e / 255, "steps": 5, "restarts": 1, "accuracy": a, "n": 10, "flags": "", "metric": "miou"}
            for e, a in [(0, 0.5), (2, 0.3), (4, 0.35), (8, 0.305)]]
    df = dense.to_frame(rows)
    assert list(df.columns[:11]) == ["model", "regime", "task", "attack", "norm", "eps", "steps", "restarts",
                                     "accuracy", "n", "flags"]
    assert df["flags"].tolist() == ["", "", "rises_with_eps", ""]

"""ImageSet: images decoded on demand behave like the tensor they stand for, in every way the suite uses one, and
the loops that walk a whole set (features, accuracy, fine-tuning, pretraining) give the same numbers from either."""
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from utils import data, imageset
from utils.imageset import ImageSet, ResizedArrays, image_batches, materialize
from utils.models import Classifier, build_encoder
from utils.probe import accuracy, extract_features, finetune
from utils.store import points_digest


def _folder(root, n_per_class=5, classes=("n01", "n02", "n03")):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(n_per_class):
                h, w = rng.integers(20, 60, 2)
                Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")
    return root


@pytest.fixture()
def folder_set(tmp_path):
    root = _folder(tmp_path / "imagenet")
    x, y = data.load_classification("imagenet", "train", imagenet_root=str(root), image_size=16)
    return x, y, root


def test_an_imageset_indexes_like_the_tensor_it_stands_for(folder_set):
    x, y, _ = folder_set
    assert isinstance(x, ImageSet) and len(x) == 15 and x.shape == (15, 3, 16, 16)
    t = materialize(x)
    assert t.dtype == torch.float32 and t.shape == x.shape and 0 <= t.min() and t.max() <= 1
    assert torch.equal(x[4], t[4])
    assert torch.equal(x[2:9:3], t[2:9:3])
    assert torch.equal(x[[7, 0, 7]], t[[7, 0, 7]])
    mask = torch.arange(15) % 4 == 1
    assert torch.equal(x[mask], t[mask])
    sub = x.subset(torch.tensor([9, 3, 12]))
    assert isinstance(sub, ImageSet) and torch.equal(sub[:], t[[9, 3, 12]]) and torch.equal(sub[1], t[3])
    with pytest.raises(IndexError, match="bool mask"):
        x[torch.ones(3, dtype=torch.bool)]


def test_workers_decode_the_same_batches_in_the_same_order(folder_set, monkeypatch):
    """DataLoader workers (used from WORKER_MIN_IMAGES images on) give exactly what the calling process decodes."""
    x, _, _ = folder_set
    order = torch.randperm(15, generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(imageset, "WORKER_MIN_IMAGES", 10 ** 9)
    inline = list(image_batches(x, 4, order=order))
    monkeypatch.setattr(imageset, "WORKER_MIN_IMAGES", 1)
    monkeypatch.setenv("SSL_ADV_DECODE_WORKERS", "2")
    workers = list(image_batches(x, 4, order=order))
    assert [len(b) for b in workers] == [4, 4, 4, 3]
    assert all(torch.equal(a, b) for a, b in zip(inline, workers))
    assert torch.equal(torch.cat(workers), materialize(x)[order])


def test_cifar_arrays_are_resized_on_demand_exactly_as_in_one_batch():
    imgs = torch.randint(0, 256, (10, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    src = ResizedArrays(imgs, torch.arange(10), size=12)
    x = ImageSet(src, torch.arange(10), (3, 12, 12))
    want = torch.nn.functional.interpolate(imgs.float(), size=(12, 12), mode="bilinear", antialias=True,
                                           align_corners=False).round().clamp(0, 255) / 255
    assert torch.equal(x[:], want) and torch.equal(x[[3]], want[[3]])
    same = ImageSet(ResizedArrays(imgs, torch.arange(10), size=8), torch.arange(10), (3, 8, 8))
    assert torch.equal(same[:], imgs.float() / 255)  # native size: no resize at all


def test_the_whole_set_loops_give_the_numbers_of_the_tensor(folder_set):
    """Features, accuracy and a fine-tuning run are bit-identical on an ImageSet and on its decoded tensor."""
    x, y, _ = folder_set
    t = materialize(x)
    torch.manual_seed(0)
    enc = build_encoder("resnet_micro", in_chans=3, normalize=False)
    assert torch.equal(extract_features(enc, x, batch_size=4), extract_features(enc, t, batch_size=4))
    clf = Classifier(enc, nn.Linear(enc.feat_dim, 3)).eval()
    assert accuracy(clf, x, y, batch_size=4) == accuracy(clf, t, y, batch_size=4)
    runs = []
    for images in (x, t):
        torch.manual_seed(0)
        enc = build_encoder("resnet_micro", in_chans=3, normalize=False)
        model, hist = finetune(Classifier(enc, nn.Linear(enc.feat_dim, 3)), images, y, epochs=2, batch_size=4,
                               amp=False, seed=3)
        runs.append((hist, model.state_dict()))
    assert runs[0][0] == runs[1][0]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])


def test_a_set_is_named_by_its_files_and_order(folder_set):
    x, y, root = folder_set
    d = points_digest(x, y)
    assert d == points_digest(data.load_classification("imagenet", "train", imagenet_root=str(root),
                                                       image_size=16)[0], y)
    assert points_digest(x.subset(torch.arange(14, -1, -1)), y) != d  # another order
    x32, _ = data.load_classification("imagenet", "train", imagenet_root=str(root), image_size=32)
    assert points_digest(x32, y) != d  # another crop size
    victim = sorted((root / "train" / "n02").iterdir())[0]
    Image.fromarray(np.zeros((70, 70, 3), np.uint8)).save(victim)  # a file replaced (another size on disk)
    assert points_digest(data.load_classification("imagenet", "train", imagenet_root=str(root),
                                                  image_size=16)[0], y) != d

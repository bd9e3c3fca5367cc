"""The one feature extractor and the one linear-probe recipe, checked against known answers and scikit-learn."""
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader, TensorDataset

from utils import probe
from utils.data import load_fashion_mnist
from utils.models import build_encoder


def _accuracy(head, f, y):
    with torch.no_grad():
        return float((head(f).argmax(1) == y).float().mean())


def test_a_linearly_separable_set_is_learned_exactly():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 16, generator=g) * 6
    y = torch.arange(4).repeat_interleave(50)
    f = centers[y] + torch.randn(200, 16, generator=g)
    head = probe.fit_logistic_regression(f, y, 4, iters=100)
    assert _accuracy(head, f, y) == 1.0
    # standardization folded into the head: it acts on raw features, a shifted copy of the set is not separable by it
    assert _accuracy(head, f + 100, y) < 1.0


def test_probe_matches_scikit_learn_on_the_same_features():
    torch.manual_seed(0)
    enc = build_encoder("resnet_micro").eval()
    x_tr, y_tr = load_fashion_mnist("data", "train", n=1500, seed=0)
    x_te, y_te = load_fashion_mnist("data", "test", n=1000, seed=0)
    f_tr, f_te = probe.extract_features(enc, x_tr), probe.extract_features(enc, x_te)
    wd = 1e-3
    head = probe.fit_logistic_regression(f_tr, y_tr, 10, iters=200, wd=wd)
    ours = _accuracy(head, f_te, y_te)
    # scikit-learn minimizes C * sum(CE) + ||W||^2 / 2, i.e. mean(CE) + ||W||^2 / (2 C N): C = 1 / (2 wd N)
    scaler = StandardScaler().fit(f_tr.numpy())
    ref = LogisticRegression(C=1 / (2 * wd * len(y_tr)), max_iter=2000).fit(scaler.transform(f_tr.numpy()), y_tr)
    theirs = float((ref.predict(scaler.transform(f_te.numpy())) == y_te.numpy()).mean())
    assert ours > 0.5  # random convolutional features are informative: the comparison is not between two failures
    print(f"probe {ours:.4f}, scikit-learn {theirs:.4f}")
    assert abs(ours - theirs) <= 0.01, (ours, theirs)


def test_features_from_tensors_and_loaders_agree_and_keep_the_mode():
    torch.manual_seed(0)
    enc = build_encoder("resnet_micro").train()
    x = torch.rand(37, 1, 28, 28)
    a = probe.extract_features(enc, x, batch_size=8)
    b = probe.extract_features(enc, DataLoader(TensorDataset(x, torch.zeros(37)), batch_size=5))
    c = probe.extract_features(enc, [x[:20], x[20:]])
    assert a.shape == (37, enc.feat_dim) and a.dtype == torch.float32
    assert torch.allclose(a, b, atol=1e-5) and torch.allclose(a, c, atol=1e-5)
    assert enc.training  # returned in the mode it came in
    spatial = probe.extract_features(enc, x, spatial=True)
    assert spatial.dim() == 4 and spatial.shape[:2] == (37, enc.feat_dim)
    assert torch.allclose(spatial.mean(dim=(2, 3)), a, atol=1e-5)  # pooled = mean of the feature map
    with pytest.raises(ValueError, match="no images"):
        probe.extract_features(enc, [])


def test_adversarial_finetuning_trains_on_attacked_batches(monkeypatch):
    """Adversarial fine-tuning takes its examples from the one PGD kernel, last iterate, inside the ball."""
    from utils import attacks

    torch.manual_seed(0)
    x, y = load_fashion_mnist("data", "train", n=64, seed=0)
    clf = probe.linear_probe(build_encoder("resnet_micro"), x, y, 10, iters=20)
    seen = []
    real = attacks.pgd

    def spy(model, xb, yb, **kw):
        out = real(model, xb, yb, **kw)
        seen.append((kw["keep"], float((out - xb).abs().max()), kw["eps"]))
        return out

    monkeypatch.setattr(attacks, "pgd", spy)
    probe.finetune(clf, x, y, epochs=1, batch_size=32, adversarial={"eps": 4 / 255, "steps": 2})
    assert len(seen) == 2
    assert all(keep == "last" and 0 < dist <= eps + 1e-6 for keep, dist, eps in seen)

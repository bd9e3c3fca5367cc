"""Transfer attacks: crafted on one model batch by batch (only a batch of adversarial images is ever held), scored
on another in float32 on the points it gets right when clean."""
import torch

from cnn_models import fit_cnn, small_cnn
from utils import attacks, robustness
from utils.data import load_fashion_mnist


def test_transfer_is_crafted_and_scored_a_batch_at_a_time(trained_cnn, data_root, monkeypatch):
    torch.manual_seed(1)
    target = fit_cnn(small_cnn(), data_root, steps=100, seed=2)
    x, y = load_fashion_mnist(data_root, "test", n=100, seed=0)
    sizes, real_pgd = [], attacks.pgd

    def pgd(model, xb, yb, **kw):
        sizes.append(len(xb))
        return real_pgd(model, xb, yb, **kw)

    monkeypatch.setattr(attacks, "pgd", pgd)
    eps_list = [0.0, 4 / 255, 32 / 255]
    rows = robustness.transfer_sweep(trained_cnn, {"t": target}, x, y, source_name="s", task="fashion_mnist",
                                     eps_list=eps_list, steps=5, seed=0, batch_size=40)
    assert sizes == [40, 40, 20] * 2  # eps 0 needs no attack; each other eps: three batches, none larger than 40
    acc = {r["eps"]: r["accuracy"] for r in rows}
    with torch.no_grad():
        clean = float((target(x).argmax(1) == y).float().mean())
    assert acc[0.0] == clean and all(r["n"] == 100 and r["attack"] == "transfer-pgd<s" for r in rows)
    assert acc[32 / 255] < clean - 0.2  # a large eps transfers: the target loses many points
    again = robustness.transfer_sweep(trained_cnn, {"t": target}, x, y, source_name="s", task="fashion_mnist",
                                      eps_list=eps_list, steps=5, seed=0, batch_size=40)
    assert again == rows  # each batch's random start is seeded by the seed and the batch's index

"""The small CNN the attack tests share: built here, trained once per session by conftest's `trained_cnn`."""
import torch
import torch.nn.functional as F
from torch import nn

from utils.data import load_fashion_mnist
from utils.models import FASHION_MEAN, FASHION_STD, Normalize


def small_cnn() -> nn.Module:
    return nn.Sequential(Normalize(FASHION_MEAN, FASHION_STD),
                         nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def fit_cnn(net: nn.Module, data_root, *, steps: int, seed: int) -> nn.Module:
    """`steps` Adam steps of 128 Fashion-MNIST training images; returns the network in eval mode."""
    x, y = load_fashion_mnist(data_root, "train", n=steps * 128, seed=seed)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for i in range(steps):
        loss = F.cross_entropy(net(x[i * 128:(i + 1) * 128]), y[i * 128:(i + 1) * 128])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()

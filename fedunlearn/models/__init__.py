"""Models by name: an MLP, a small CNN and torchvision's ResNet-18 adapted to small images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fedunlearn.config import check_range
from fedunlearn.registry import Registry


@dataclass(frozen=True)
class ModelConfig:
    name: str = "cnn"
    hidden: int = 128        # width of the dense hidden layer(s)
    batchnorm: bool = False  # CNN only; ResNet-18 always has BatchNorm
    pool: int = 1            # logistic only: average-pool the input by this factor (fewer fixed features)

    def __post_init__(self):
        MODELS.check(self.name)  # an unknown model fails when the config is built, before any data loads
        check_range("model.pool", self.pool, 1)


class MLP(nn.Module):
    def __init__(self, input_shape, num_classes: int, hidden: int = 128):
        super().__init__()
        dim = int(torch.tensor(input_shape).prod())
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.net(x)


class CNN(nn.Module):
    """Two conv blocks and two dense layers: the model of the federated-unlearning prototypes."""

    def __init__(self, input_shape, num_classes: int, hidden: int = 128, batchnorm: bool = False):
        super().__init__()
        channels = input_shape[0]

        def block(cin, cout):
            layers = [nn.Conv2d(cin, cout, 3, padding=1)]
            if batchnorm:
                layers.append(nn.BatchNorm2d(cout))
            return layers + [nn.ReLU(), nn.MaxPool2d(2)]

        self.features = nn.Sequential(*block(channels, 32), *block(32, 64), nn.Flatten())
        with torch.no_grad():
            flat = self.features(torch.zeros(1, *input_shape)).shape[1]
        self.classifier = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.classifier(self.features(x))


def resnet18(input_shape, num_classes: int) -> nn.Module:
    """ResNet-18 with a 3x3 stem and no max-pool, as usual for 28-32 pixel images."""
    import torchvision

    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def logistic(input_shape, num_classes: int, pool: int = 1) -> nn.Module:
    """Multinomial logistic regression on fixed features (the pixels, average-pooled): the convex case."""
    c, h, w = input_shape
    return nn.Sequential(nn.AvgPool2d(pool) if pool > 1 else nn.Identity(), nn.Flatten(),
                         nn.Linear(c * (h // pool) * (w // pool), num_classes))


def build_mlp(shape, num_classes: int, cfg: ModelConfig) -> nn.Module:
    return MLP(shape, num_classes, cfg.hidden)


def build_cnn(shape, num_classes: int, cfg: ModelConfig) -> nn.Module:
    return CNN(shape, num_classes, cfg.hidden, cfg.batchnorm)


def build_resnet18(shape, num_classes: int, cfg: ModelConfig) -> nn.Module:
    return resnet18(shape, num_classes)


def build_logistic(shape, num_classes: int, cfg: ModelConfig) -> nn.Module:
    return logistic(shape, num_classes, cfg.pool)


# name -> "module:builder", builder(input_shape, num_classes, ModelConfig) -> nn.Module.
MODELS = Registry("model", {
    "mlp": "fedunlearn.models:build_mlp",
    "cnn": "fedunlearn.models:build_cnn",
    "resnet18": "fedunlearn.models:build_resnet18",
    "logistic": "fedunlearn.models:build_logistic",
})


def build_model(cfg: ModelConfig, input_shape, num_classes: int) -> nn.Module:
    return MODELS.get(cfg.name)(tuple(input_shape), num_classes, cfg)


def fresh_model(model_cfg: ModelConfig, shape, num_classes: int, seed: int) -> nn.Module:
    """A seeded, untrained model; module-level (not a closure), so Ray ships it by reference."""
    from fedunlearn.training import seed_everything

    seed_everything(seed)
    return build_model(model_cfg, shape, num_classes)

"""Which torchvision models ecomp_deap reads as graph parents, and one short
``compress(..., max_macs=0.5)`` of each: random weights, 40 random 3x32x32 images,
pop 6, 2 generations, one thread. Says per model: read or refused (the message), the
coupled groups and channels, the multiply-adds and parameters the chosen network keeps.
The accuracies mean nothing (random weights and data); what it shows is what works.

    .venv/bin/python benchmarks/torchvision_models.py                      # every model below (minutes)
    .venv/bin/python benchmarks/torchvision_models.py resnet18 mobilenet_v2
"""
from __future__ import annotations

import sys
import time

import torch
import torchvision

from ecomp_deap import compress
from ecomp_deap.config import EcompConfig
from ecomp_deap.errors import UserError
from ecomp_deap.nets.reader import read_parent

MODELS = ["resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0",
          "densenet121", "vgg11_bn", "squeezenet1_0", "regnet_x_400mf", "convnext_tiny", "vit_b_16"]


def try_model(name: str, x: torch.Tensor, y: torch.Tensor) -> str:
    """One line on ``name``: refused (why), or read and compressed (sizes)."""
    torch.manual_seed(0)
    kw = {"num_classes": 10, **({"image_size": 32} if name.startswith("vit") else {})}
    model = getattr(torchvision.models, name)(**kw).eval()
    t = time.perf_counter()
    try:
        parent = read_parent(model, x[:4])
    except UserError as e:
        return f"{name}: refused: {e}"
    read_s = time.perf_counter() - t
    cfg = EcompConfig(pop_size=6, generations=2, batch_size=20, val_size=20, perplexity=5.0, mutation="units",
                      embedding_layers=None, recombination_layers=None)
    t = time.perf_counter()
    best = compress(model, train=(x, y), val=(x, y), test=(x, y), config=cfg, progress=False, max_macs=0.5,
                    allow_weak_parent=True).best
    return (f"{name}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, read in {read_s:.1f} s, "
            f"{len(parent.net.hidden_widths)} groups ({sum(parent.net.hidden_widths)} channels); compressed: "
            f"{best.macs_kept:.2f} of the multiply-adds, {best.parameters_kept:.2f} of the parameters kept, "
            f"a {type(best.module).__name__} ({time.perf_counter() - t:.1f} s)")


def main(argv=None) -> int:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 3, 32, 32, generator=g), torch.arange(40) % 10
    for name in (argv if argv is not None else sys.argv[1:]) or MODELS:
        print(try_model(name, x, y), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

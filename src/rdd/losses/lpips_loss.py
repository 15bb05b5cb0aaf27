"""LPIPS distance for PD + LPIPS, loaded offline from local weight files."""

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rdd.errors import RddError

# lpips trunk name -> torchvision builder, its ImageNet weights (what lpips would download), label
_BACKBONES = {
    "vgg": ("vgg16", "VGG16_Weights", "VGG16"),
    "alex": ("alexnet", "AlexNet_Weights", "AlexNet"),
}

# VGG16's relu5_3 sits behind four 2x max-pools and AlexNet's last layers behind a stride-4 conv
# and two stride-2 pools; below 32 pixels their deepest feature maps would be empty.
MIN_SIZE = 32


class LPIPSLoss(nn.Module):
    """Frozen LPIPS (Zhang et al. 2018) built from local files, with no downloads.

    The ImageNet trunk comes from `backbone_weights`, a torchvision state dict file (default:
    the torchvision cache); the linear layers from `lin_weights` (default: the file shipped
    inside the lpips package).
    """

    def __init__(
        self,
        net: str = "vgg",
        backbone_weights: str | Path | None = None,
        lin_weights: str | Path | None = None,
    ):
        super().__init__()
        if net not in _BACKBONES:
            raise RddError(f"unknown LPIPS net {net!r}; choose one of {sorted(_BACKBONES)}")
        # imported here: lpips and torchvision are slow to import and only PD+LPIPS needs them
        import lpips
        from torchvision import models

        builder, weights_enum, name = _BACKBONES[net]
        build, imagenet = getattr(models, builder), getattr(models, weights_enum).IMAGENET1K_V1
        if backbone_weights is None:
            cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(imagenet.url).name
            if not cached.is_file():
                raise RddError(
                    f"LPIPS needs the ImageNet {name} backbone ({cached.name}); offline, pass a "
                    "local file with distill.lpips_weights=PATH"
                )
            backbone_weights = cached
        if not Path(backbone_weights).is_file():
            raise RddError(
                f"LPIPS backbone weights not found: {backbone_weights} (distill.lpips_weights)"
            )
        lin_weights = lin_weights or Path(lpips.__file__).parent / f"weights/v0.1/{net}.pth"

        with warnings.catch_warnings():  # lpips passes torchvision the deprecated `pretrained=`
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net=net, pretrained=False, pnet_rand=True, verbose=False)
        with torch.device("meta"):
            backbone = build()  # shapes only: every weight comes from the file
        saved = torch.load(backbone_weights, map_location="cpu", weights_only=True)
        backbone.load_state_dict(saved, assign=True)
        # lpips splits torchvision's `features` into slices that keep the layer indices as names
        trunk = {
            f"{slice_name}.{index}.{key}": value
            for slice_name, block in self.lpips.net.named_children()
            for index, _ in block.named_children()
            for key, value in backbone.features[int(index)].state_dict().items()
        }
        self.lpips.net.load_state_dict(trunk)
        lins = torch.load(lin_weights, map_location="cpu", weights_only=True)
        self.lpips.lins.load_state_dict({k.removeprefix("lin"): v for k, v in lins.items()})
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPSLoss":
        """Always stay in eval mode: the lpips linear layers carry dropout."""
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image LPIPS distance (N,) between images (N, 1 or 3, H, W) in [-1, 1]."""
        return self.lpips(_prepare(x), _prepare(y)).flatten()


def _prepare(images: torch.Tensor) -> torch.Tensor:
    """Grayscale to RGB, and upsample bilinearly to at least MIN_SIZE on each side."""
    images = images.expand(-1, 3, -1, -1)
    h, w = images.shape[-2:]
    if min(h, w) < MIN_SIZE:
        size = (max(h, MIN_SIZE), max(w, MIN_SIZE))
        images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    return images

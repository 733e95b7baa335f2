"""EfficientNet-Lite split into a frozen trunk and a trainable tail, and a store of the trunk's outputs.

Fine-tuning updates only the last MBConv blocks and the head convolution with its batch norm
(the tail). The stem and the blocks in front of them (the trunk) stay frozen, and every batch
norm stays in eval mode, so the trunk's output for a given input image never changes.
`TrunkFeatures` computes that output once per (image, view) under torch.no_grad and keeps it.
Every fold and epoch that needs the same view reuses it, and only the tail builds an autograd
graph.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from encoders.image.backbones import ImageBackboneSpec, get_image_backbone
from training.image_augment import ImageAugmentation, augmented_view, center_view, view_generator

logger = logging.getLogger(__name__)

CENTER_VIEW = 0  # view number of the encoder's central crop. Augmented views are numbered 1, 2, ...


class SplitEfficientNetLite:
    """An EfficientNet-Lite pooled-feature module seen as a frozen trunk and a trainable tail.

    `pooled` is the module that the image backbone registry builds (the network up to the global
    average pool). The split shares its weights, so training the tail trains `pooled`.
    """

    def __init__(self, pooled: nn.Module, spec: ImageBackboneSpec, tail_blocks: int) -> None:
        network = getattr(pooled, "network", None)
        blocks = getattr(network, "_blocks", None)
        if network is None or not isinstance(blocks, nn.ModuleList):
            raise TypeError(
                f"image backbone {spec.name!r} ({type(pooled).__name__}) is not an EfficientNet-Lite "
                "with MBConv blocks, and only EfficientNet-Lite backbones can be fine-tuned"
            )
        if not 1 <= tail_blocks <= len(blocks):
            raise ValueError(f"tail_blocks must be in 1..{len(blocks)} for {spec.name}, got {tail_blocks}")
        self.pooled = pooled
        self.network = network
        self.spec = spec
        self.split = len(blocks) - tail_blocks  # index of the first tail block
        self.drop_connect_rate = float(network._global_params.drop_connect_rate or 0.0)
        self._mean = torch.tensor(spec.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(spec.std, dtype=torch.float32).view(1, 3, 1, 1)

    def tail_modules(self) -> list[nn.Module]:
        """Return the modules that fine-tuning updates: tail blocks, head convolution and its batch norm."""
        return [*self.network._blocks[self.split :], self.network._conv_head, self.network._bn1]

    def tail_parameters(self) -> list[nn.Parameter]:
        """Return the parameters of `tail_modules`."""
        return [parameter for module in self.tail_modules() for parameter in module.parameters()]

    def freeze_trunk(self) -> None:
        """Make every parameter but the tail's constant to autograd."""
        for parameter in self.pooled.parameters():
            parameter.requires_grad_(False)
        for parameter in self.tail_parameters():
            parameter.requires_grad_(True)

    def set_tail_training(self, training: bool) -> None:
        """Switch the tail's drop connect on or off, and keep every batch norm, the tail's too, in eval mode.

        Batch norms keep normalising with their pretrained running statistics, and their scale and
        shift are still trained. With batch statistics in training, batches of 8 to 32 images made
        the training-mode outputs differ from the eval-mode ones enough that the validation loss
        rose while the training loss fell.
        """
        self.pooled.eval()
        for module in self.tail_modules():
            module.train(training)
            for submodule in module.modules():
                if isinstance(submodule, nn.modules.batchnorm._BatchNorm):
                    submodule.eval()

    def trunk(self, pixels: torch.Tensor) -> torch.Tensor:
        """Run the frozen trunk on network inputs (B, 3, S, S) uint8 and return (B, C, S/32, S/32) float32.

        For EfficientNet-Lite0 at S = 224 and a tail of 1 to 4 blocks, C is 192.
        """
        device = self.network._conv_stem.weight.device
        with torch.no_grad():
            scaled = pixels.to(device=device, dtype=torch.float32) / 255.0  # (B, 3, S, S)
            x = (scaled - self._mean.to(device)) / self._std.to(device)
            x = self.network._swish(self.network._bn0(self.network._conv_stem(x)))
            for index in range(self.split):
                x = self._block(index, x)
        return x.contiguous()

    def tail(self, features: torch.Tensor) -> torch.Tensor:
        """Run the tail on trunk outputs (B, C, h, w) and return the pooled features (B, 1280)."""
        x = features
        for index in range(self.split, len(self.network._blocks)):
            x = self._block(index, x)
        x = self.network._swish(self.network._bn1(self.network._conv_head(x)))  # (B, 1280, h, w)
        return x.mean(dim=(2, 3))

    def _block(self, index: int, x: torch.Tensor) -> torch.Tensor:
        # The same stochastic depth as the library's extract_features: it rises linearly with the
        # block index and applies only in training mode to blocks with a skip connection.
        rate = self.drop_connect_rate * index / len(self.network._blocks)
        return self.network._blocks[index](x, drop_connect_rate=rate)


def load_pretrained(spec: ImageBackboneSpec) -> nn.Module:
    """Build the backbone's pooled-feature module from its local weights file, on CPU in eval mode."""
    path = spec.resolve_weights_path()
    state_dict = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    return spec.build(state_dict).eval()


class TrunkFeatures:
    """Frozen-trunk outputs (C, h, w) float32 on CPU per (image key, view), computed on first request.

    View 0 (`CENTER_VIEW`) is the encoder's central crop. View v >= 1 is `augmented_view` with
    the generator `view_generator(seed, key, v)`. The outputs are kept for the object's lifetime:
    about 37 KiB per image and view for EfficientNet-Lite0.
    """

    def __init__(
        self,
        images: Mapping[str, torch.Tensor],
        *,
        backbone: str,
        tail_blocks: int,
        augmentation: ImageAugmentation,
        seed: int,
        device: torch.device,
        batch_size: int = 32,
    ) -> None:
        self.images = images
        self.spec = get_image_backbone(backbone)
        self.backbone = backbone
        self.tail_blocks = tail_blocks
        self.augmentation = augmentation
        self.seed = seed
        pooled = load_pretrained(self.spec).to(device)
        # channels_last ran the trunk about 1.5 times as fast as the default layout on a 2-core
        # Xeon with AVX-512, at float32 rounding differences.
        pooled = pooled.to(memory_format=torch.channels_last)
        self.network = SplitEfficientNetLite(pooled, self.spec, tail_blocks)
        self.network.freeze_trunk()
        self.device = device
        self.batch_size = batch_size
        self._outputs: dict[int, dict[str, torch.Tensor]] = {}

    def check_settings(
        self, *, backbone: str, tail_blocks: int, augmentation: ImageAugmentation, seed: int
    ) -> None:
        """Raise ValueError when a setting differs from the one these outputs were computed with."""
        requested = {
            "backbone": backbone,
            "tail_blocks": tail_blocks,
            "augmentation": augmentation,
            "seed": seed,
        }
        for name, value in requested.items():
            if getattr(self, name) != value:
                raise ValueError(
                    f"the trunk features were computed with {name}={getattr(self, name)!r}, "
                    f"not {value!r}; make a new TrunkFeatures for these settings"
                )

    def computed_views(self) -> list[int]:
        """Return the view numbers that have at least one stored output, in ascending order."""
        return sorted(view for view, stored in self._outputs.items() if stored)

    def get(self, keys: Sequence[str], view: int) -> torch.Tensor:
        """Return the trunk outputs of `keys` for `view`, (K, C, h, w) float32 on CPU in key order."""
        if not keys:
            raise ValueError("keys must not be empty")
        if view < 0:
            raise ValueError(f"view must be 0 (central crop) or a positive augmented view number, got {view}")
        stored = self._outputs.setdefault(view, {})
        missing = [key for key in dict.fromkeys(keys) if key not in stored]
        unknown = [key for key in missing if key not in self.images]
        if unknown:
            raise KeyError(f"resized image not found for {len(unknown)} key(s), first {unknown[:5]}")

        started = time.perf_counter()
        for start in range(0, len(missing), self.batch_size):
            batch_keys = missing[start : start + self.batch_size]
            pixels = torch.stack([self._network_input(key, view) for key in batch_keys])  # (B, 3, S, S) uint8
            outputs = self.network.trunk(pixels.contiguous(memory_format=torch.channels_last)).cpu()
            for key, output in zip(batch_keys, outputs, strict=True):
                stored[key] = output
        if missing:
            logger.info(
                "computed trunk outputs of %d images for view %d in %.1f s",
                len(missing),
                view,
                time.perf_counter() - started,
            )
        return torch.stack([stored[key] for key in keys])

    def _network_input(self, key: str, view: int) -> torch.Tensor:
        pixels = self.images[key]  # (3, H, W) uint8
        size = self.spec.input_size
        if view == CENTER_VIEW:
            return center_view(pixels, size)
        generator = view_generator(self.seed, key, view)
        return augmented_view(
            pixels, size, self.augmentation, generator, interpolation=self.spec.interpolation
        )

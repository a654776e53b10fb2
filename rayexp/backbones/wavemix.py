"""WaveMix-192/16 (level 3) image classifier, checkpoint-compatible with the paper's weights.

Module names, order and shapes mirror ``wavemix.classification.WaveMix`` with
``level=3, initial_conv='pachify', patch_size=4`` (pranavphoenix/WaveMix), so
the published ImageNet checkpoint :data:`WAVEMIX_WEIGHTS_FILE` loads with
``strict=True``. The only intended difference is the wavelet transform: the
published code calls pytorch_wavelets' ``DWTForward(wave='db1', mode='zero')``
held in module-level globals; here it is the project's own parameter-free
:class:`~rayexp.backbones.haar.HaarDWT2d`, which computes the same
coefficients in the same channel order and contributes nothing to the
``state_dict``. ``pool[1]`` is ``nn.Flatten`` instead of einops' ``Rearrange``;
neither has state, so key names are unchanged.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .haar import HaarDWT2d

__all__ = [
    "WAVEMIX_WEIGHTS_FILE",
    "WAVEMIX_WEIGHTS_URL",
    "WAVEMIX_INPUT_MULTIPLE",
    "Level3Waveblock",
    "WaveMix",
    "wavemix_192_16",
]

WAVEMIX_WEIGHTS_FILE = "wavemix_192_16_75.06.pth"
WAVEMIX_WEIGHTS_URL = (
    "https://huggingface.co/cloudwalker/wavemix/resolve/main/Saved_Models_Weights/ImageNet/wavemix_192_16_75.06.pth"
)

#: Input sides must be multiples of this: the stem patchifies by 4 and each
#: block halves the resolution three times (4 * 2**3 = 32), and the transposed
#: convolutions must land back exactly on the block's input size.
WAVEMIX_INPUT_MULTIPLE = 32
_PATCH_SIZE = 4
_LEVELS = 3


def _feedforward(in_ch: int, hidden_ch: int, ff_channel: int, out_ch: int, dropout: float) -> nn.Sequential:
    """1x1 MLP followed by a 2x learned upsampling, as in the published blocks.

    Index layout (0 conv, 1 GELU, 2 Dropout, 3 conv, 4 ConvTranspose, 5 BN)
    is what the checkpoint keys (``feedforwardK.{0,3,4,5}``) depend on.
    """
    return nn.Sequential(
        nn.Conv2d(in_ch, hidden_ch, 1),
        nn.GELU(),
        nn.Dropout(dropout),
        nn.Conv2d(hidden_ch, ff_channel, 1),
        nn.ConvTranspose2d(ff_channel, out_ch, 4, stride=2, padding=1),
        nn.BatchNorm2d(out_ch),
    )


class Level3Waveblock(nn.Module):
    """Three-level wavelet token mixer; output has the input's shape (used residually).

    ``reduction`` shrinks channels 4x so that each DWT level's
    ``cat([LL, details])`` has ``final_dim`` channels again. The coarsest level
    is processed first and upsampled into the next finer level
    (``feedforward3`` -> ``feedforward2`` -> ``feedforward1``).
    """

    def __init__(self, *, mult: int = 2, ff_channel: int = 192, final_dim: int = 192, dropout: float = 0.5) -> None:
        super().__init__()
        if final_dim % 4:
            raise ValueError(f"final_dim must be divisible by 4, got {final_dim}")
        half = final_dim // 2
        hidden = final_dim * mult
        # Attribute order matches the published class so state_dict order does too.
        self.feedforward1 = _feedforward(final_dim + half, hidden, ff_channel, final_dim, dropout)
        self.feedforward2 = _feedforward(final_dim + half, hidden, ff_channel, half, dropout)
        self.feedforward3 = _feedforward(final_dim, hidden, ff_channel, half, dropout)
        self.reduction = nn.Conv2d(final_dim, final_dim // 4, 1)
        self.dwt = HaarDWT2d()  # parameter-free, no state_dict entries

    def forward(self, x: Tensor) -> Tensor:
        x = self.reduction(x)
        feats: list[Tensor] = []
        ll = x
        for _ in range(_LEVELS):
            # Chaining on LL equals pytorch_wavelets' J-level transform used upstream.
            ll, details = self.dwt(ll)
            feats.append(torch.cat((ll, details), dim=1))
        x1, x2, x3 = feats
        x3 = self.feedforward3(x3)
        x2 = self.feedforward2(torch.cat((x2, x3), dim=1))
        return self.feedforward1(torch.cat((x1, x2), dim=1))


class WaveMix(nn.Module):
    """WaveMix classifier (level-3 blocks, 4x4 patchifying stem).

    Defaults give WaveMix-192/16, the configuration of the published ImageNet
    checkpoint (27,857,608 parameters at 1000 classes). The classifier head is
    ``pool[2]``.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        depth: int = 16,
        mult: int = 2,
        ff_channel: int = 192,
        final_dim: int = 192,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.layers = nn.ModuleList(
            Level3Waveblock(mult=mult, ff_channel=ff_channel, final_dim=final_dim, dropout=dropout)
            for _ in range(depth)
        )
        self.pool = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(final_dim, num_classes),
        )
        self.conv = nn.Sequential(
            nn.Conv2d(3, final_dim // 4, 3, 1, 1),
            nn.Conv2d(final_dim // 4, final_dim // 2, 3, 1, 1),
            nn.Conv2d(final_dim // 2, final_dim, _PATCH_SIZE, _PATCH_SIZE),
            nn.GELU(),
            nn.BatchNorm2d(final_dim),
        )

    @staticmethod
    def check_input_size(height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are positive multiples of 32.

        Other sizes would either fail deep inside a block (odd DWT input) or
        silently mis-align the residual after the transposed convolutions.
        """
        m = WAVEMIX_INPUT_MULTIPLE
        if height < m or width < m or height % m or width % m:
            raise ValueError(
                f"WaveMix input size {height}x{width} (H x W) is not supported: height and width must be "
                f"multiples of {m} (patch size {_PATCH_SIZE} x 2**{_LEVELS} DWT levels), smallest side {m}"
            )

    def forward_features(self, img: Tensor) -> Tensor:
        """Return the final (N, final_dim, H/4, W/4) feature map before pooling."""
        if img.dim() != 4:
            raise ValueError(f"WaveMix expects a 4D (N, 3, H, W) tensor, got shape {tuple(img.shape)}")
        self.check_input_size(int(img.shape[-2]), int(img.shape[-1]))
        x = self.conv(img)
        for block in self.layers:
            x = block(x) + x
        return x

    def forward(self, img: Tensor) -> Tensor:
        return self.pool(self.forward_features(img))


def wavemix_192_16(num_classes: int = 1000) -> WaveMix:
    """WaveMix-192/16 level 3, the layout of :data:`WAVEMIX_WEIGHTS_URL`.

    Replace or resize ``model.pool[2]`` after loading the 1000-class weights
    to fine-tune on another label set.
    """
    return WaveMix(num_classes=num_classes, depth=16, mult=2, ff_channel=192, final_dim=192, dropout=0.5)

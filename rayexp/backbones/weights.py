"""Pretrained weights: where each file comes from, whether it can be had, and loading it.

torchvision backbones use the URLs of their weights enums; WaveMix its Hugging Face URL; timm backbones their
Hugging Face repository (``timm/<model>.<tag>``, ``model.safetensors``). Files are looked up, in order, in
``--weights-dir`` (or ``$RAYEXP_WEIGHTS_DIR``), then in torch's cache ``$TORCH_HOME/hub/checkpoints``, and for
timm in huggingface_hub's cache (``$HF_HOME/hub``, where timm itself keeps them); a cached file loads with no
network call. Otherwise the file is downloaded into the cache. Offline (``$RAYEXP_OFFLINE=1``: nothing is
probed or downloaded) and not cached is an error naming the file, the URL and where to put it: there is never a
silent fallback to random weights. Every file loads as tensors only (``weights_only=True``, or safetensors).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from rayexp.backbones.specs import BackboneSpec
from rayexp.errors import RayexpError

WEIGHTS_DIR_ENV = "RAYEXP_WEIGHTS_DIR"
OFFLINE_ENV = "RAYEXP_OFFLINE"  # "1": never probe or download; only local files count


HF_FILE = "model.safetensors"  # what timm publishes in each timm/<model>.<tag> repository


def weights_url(spec: BackboneSpec) -> str:
    """Where the published weight file of ``spec`` is downloaded from."""
    if spec.url:
        return spec.url
    if spec.weights.startswith("http"):
        return spec.weights
    # Lazy on purpose: torchvision costs about 1.6 s to import, and this module is imported by
    # `import rayexp.backbones` and the preflight, which need no URL when the file is cached.
    from torchvision.models import get_weight

    return get_weight(spec.weights).url


def cache_dir() -> Path:
    """torch's checkpoint cache, ``$TORCH_HOME/hub/checkpoints``."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _weights_dir(weights_dir: str | os.PathLike | None) -> Path | None:
    value = weights_dir or os.environ.get(WEIGHTS_DIR_ENV)
    return Path(value).expanduser() if value else None


def _hf_cached(spec: BackboneSpec) -> Path | None:
    """timm's weights in huggingface_hub's cache (``$HF_HOME/hub/models--timm--…/snapshots/…``), if there."""
    if not spec.hub_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(spec.hub_id, HF_FILE)
    return Path(found) if isinstance(found, str) else None


def find_weights_file(spec: BackboneSpec, weights_dir: str | os.PathLike | None = None) -> Path | None:
    """The local weight file of ``spec``, if there is one."""
    for folder in (_weights_dir(weights_dir), cache_dir()):
        if folder is not None and (folder / spec.weights_file).is_file():
            return folder / spec.weights_file
    return _hf_cached(spec)


@dataclass(frozen=True)
class WeightsStatus:
    backbone: str
    available: bool
    where: str  # the local path, the URL that answered, or why neither
    fix: str = ""


def _offline(spec: BackboneSpec) -> bool:
    """Nothing may be probed or downloaded: ``$RAYEXP_OFFLINE=1``, or huggingface_hub's own offline mode
    (``HF_HUB_OFFLINE=1``) for weights that come through it."""
    return os.environ.get(OFFLINE_ENV) == "1" or bool(spec.hub_id and os.environ.get("HF_HUB_OFFLINE") == "1")


def url_reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether a HEAD request to ``url`` answers, within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout) as resp:
            return resp.status < 400
    except (urllib.error.URLError, OSError, ValueError):
        return False


def missing_weights_fix(spec: BackboneSpec, weights_dir: str | os.PathLike | None = None) -> str:
    folder = _weights_dir(weights_dir) or cache_dir()
    return (
        f"download {weights_url(spec)} and save it as {folder / spec.weights_file} "
        f"(or put the file in a folder and pass --weights-dir / set ${WEIGHTS_DIR_ENV})"
    )


def weights_status(
    spec: BackboneSpec, weights_dir: str | os.PathLike | None = None, probe_network: bool = True
) -> WeightsStatus:
    """Can the weights of ``spec`` be had: a local file, or a URL that answers?"""
    local = find_weights_file(spec, weights_dir)
    if local is not None:
        return WeightsStatus(spec.name, True, str(local))
    url = weights_url(spec)
    if probe_network and not _offline(spec) and url_reachable(url):
        return WeightsStatus(spec.name, True, url)
    return WeightsStatus(
        spec.name,
        False,
        f"{spec.weights_file} is not cached and {url} cannot be reached",
        missing_weights_fix(spec, weights_dir),
    )


_DENSENET_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def _normalise_keys(spec: BackboneSpec, state_dict: dict) -> dict:
    """Undo the published files' quirks: DataParallel prefixes and DenseNet's legacy key names."""
    if "state_dict" in state_dict and isinstance(state_dict["state_dict"], dict):
        state_dict = state_dict["state_dict"]
    out = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if spec.builder.startswith("densenet"):
            match = _DENSENET_LEGACY_KEY.match(key)
            if match:
                key = match.group(1) + match.group(2)
        out[key] = value
    return out


def _load_file(path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    return torch.load(path, map_location="cpu", weights_only=True)


def _download_from_hub(spec: BackboneSpec, weights_dir: str | os.PathLike | None) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(spec.hub_id, HF_FILE))
    except Exception as exc:  # huggingface_hub's errors (offline, 404, network) share no base class but this
        raise RayexpError(
            f"pretrained weights for {spec.name} are not available: {HF_FILE} of {spec.hub_id} is not in "
            f"huggingface_hub's cache and downloading it failed ({type(exc).__name__}: {exc}). "
            f"Fix: {missing_weights_fix(spec, weights_dir)}"
        ) from None


def load_pretrained_state_dict(spec: BackboneSpec, weights_dir: str | os.PathLike | None = None) -> dict:
    """The published (ImageNet) state dict of ``spec``, loaded as tensors only."""
    local = find_weights_file(spec, weights_dir)
    if local is not None:
        state_dict = _load_file(local)
    elif spec.hub_id and not _offline(spec):
        state_dict = _load_file(_download_from_hub(spec, weights_dir))
    else:
        url = weights_url(spec)
        if _offline(spec):
            raise RayexpError(
                f"pretrained weights for {spec.name} are not available: {spec.weights_file} is not in {cache_dir()} "
                f"and offline mode (${OFFLINE_ENV}=1 or HF_HUB_OFFLINE=1) forbids downloading {url}. "
                f"Fix: {missing_weights_fix(spec, weights_dir)}"
            )
        try:
            state_dict = torch.hub.load_state_dict_from_url(
                url, map_location="cpu", progress=False, weights_only=True, file_name=spec.weights_file
            )
        except (urllib.error.URLError, OSError) as exc:
            raise RayexpError(
                f"pretrained weights for {spec.name} are not available: {spec.weights_file} is not in "
                f"{cache_dir()} and downloading {url} failed ({exc}). Fix: {missing_weights_fix(spec, weights_dir)}"
            ) from None
    return _normalise_keys(spec, state_dict)

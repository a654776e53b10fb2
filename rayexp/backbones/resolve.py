"""Any backbone by name, resolved to one :class:`BackboneSpec`: the paper's eleven (the registry),
``torchvision:<name>[@<Weights>.<MEMBER>]`` (any classifier ``torchvision.models.list_models`` lists, with its
DEFAULT weights unless named) and ``timm:<name>[.<pretrained tag>]`` (any ``timm.list_models()`` name). Any of
them with ``+random`` appended is the same architecture trained from random init, never from weights: beside
the pretrained one in a sweep, it measures what the pretraining is worth.

Every consumer (preflight, the factory, the cost table, the ImageNet-rank correlation, the recommendation) reads
the spec, so a backbone from any source is treated alike. A spec comes from the source's own metadata: torchvision's
weights meta (parameters, ImageNet top-1, smallest input), timm's pretrained config (weights repository, input
size, whether the size is fixed, the head) and a model built on the ``meta`` device (no memory, no weights) for what
the metadata leaves out. Names keep the trial key unambiguous: neither source's names contain ``/``.

One network, one name (:func:`canonical_name`, :func:`sweep_backbones`): the name is the trial key's first field
and the MLflow runs', so two spellings of the same weights would train and report them twice. The default weights
are named by the plain name (``torchvision:resnet50``, ``timm:resnet18``), as ``--list-backbones`` lists them;
``@…DEFAULT``, ``@<the member DEFAULT points to>`` and timm's default tag are rewritten to it, a bare member
(``@IMAGENET1K_V1``) gets its enum, and the enum named must be the model's own. The weights a run used are still
recorded (its ``weights`` param names the member or tag), so a later library that moves DEFAULT is seen there.
"""

from __future__ import annotations

import difflib
import functools
import os
import warnings
from dataclasses import replace
from typing import Any, Sequence

from rayexp.backbones.specs import RANDOM_SUFFIX, REGISTRY, BackboneSpec, default_batch_size
from rayexp.errors import RayexpError

TORCHVISION = "torchvision:"
TIMM = "timm:"
# The registry's smallest side: the usual total stride, below which the last stage sees padding only. A source's
# own minimum (torchvision's min_size, timm's min_input_size) counts where it is larger.
MIN_SIDE = 32
TIMM_EXTRA = "pip install 'rayexp[timm]' (or pip install timm)"
_HOW_TO_NAME = (
    f"name any torchvision classifier as {TORCHVISION}<name> (e.g. torchvision:mobilenet_v3_small) or any timm model "
    f"as {TIMM}<name> (e.g. timm:convnext_nano.in12k_ft_in1k), any of them with {RANDOM_SUFFIX} for random init; "
    "--list-backbones lists them"
)


def _close(name: str, known: list[str], n: int = 5) -> str:
    matches = difflib.get_close_matches(name, known, n=n, cutoff=0.6)
    return f"; did you mean {', '.join(matches)}?" if matches else ""


@functools.lru_cache(maxsize=None)
def get_spec(name: str) -> BackboneSpec:
    """The spec of ``name`` from any source, or an error naming close names and how to name others."""
    if name.endswith(RANDOM_SUFFIX) and len(name) > len(RANDOM_SUFFIX):
        base = get_spec(name[: -len(RANDOM_SUFFIX)])
        return replace(base, name=name, title=f"{base.title}, from random init", random_init=True)
    if name in REGISTRY:
        return REGISTRY[name]
    if name.startswith(TORCHVISION):
        return _torchvision_spec(name)
    if name.startswith(TIMM):
        return _timm_spec(name)
    raise RayexpError(
        f"unknown backbone {name!r}; known backbones: {', '.join(REGISTRY)}{_close(name, list(REGISTRY))}; "
        + _HOW_TO_NAME
    )


def known_spec(name: str) -> BackboneSpec | None:
    """The spec of ``name``, or None where it cannot be resolved here (a report read on a machine without timm,
    a name of a newer torchvision): the report then leaves that backbone's size and top-1 blank."""
    try:
        return get_spec(name)
    except RayexpError:
        return None


def _torchvision_spec(name: str) -> BackboneSpec:
    import torch
    import torchvision.models as models
    from torch import nn

    arch, at, member = name[len(TORCHVISION) :].partition("@")
    classifiers = models.list_models(module=models)
    if arch not in classifiers:
        raise RayexpError(
            f"unknown torchvision classifier {arch!r} in {name!r}{_close(arch, classifiers)} "
            "(torchvision.models.list_models(module=torchvision.models) lists them)"
        )
    enum = models.get_model_weights(arch)
    weights = _torchvision_weights(name, arch, enum, member) if at else enum.DEFAULT
    meta = weights.meta
    classes = len(meta["categories"])
    transforms = weights.transforms()  # the normalisation the weights were trained with
    head = ""
    try:  # the head's name from a model built on the meta device; regnets' init cannot run there
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # googlenet's and inception's notes on their init
            model = models.get_model(arch, weights=None, num_classes=classes)
    except (NotImplementedError, RuntimeError):
        model = None
    if model is not None:
        linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and m.out_features == classes]
        if not linears:
            raise RayexpError(f"{name}: its classifier is not a final Linear layer (which rayexp replaces)")
        head = linears[-1]
    builder_module = models.get_model_builder(arch).__module__.rsplit(".", 1)[-1]
    min_size = tuple(meta.get("min_size", (MIN_SIDE, MIN_SIDE)))
    # torchvision's ViTs and MaxViT are built for one input size (position embeddings, partition grids)
    fixed = min_size if builder_module in ("vision_transformer", "maxvit") else None
    params_m = round(meta["num_params"] / 1e6, 2)
    top1 = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    return BackboneSpec(
        name=name,
        title=f"{arch} (torchvision)",
        builder=arch,
        weights=f"{enum.__name__}.{weights.name}",
        weights_file=os.path.basename(weights.url),
        imagenet_top1=top1,
        params_m=params_m,
        family="transformer" if builder_module in ("vision_transformer", "swin_transformer", "maxvit") else "CNN",
        head=head,
        feature_dim=None,
        min_input=max(MIN_SIDE, *min_size),
        batch_size=default_batch_size(params_m),
        origin="torchvision",
        url=weights.url,
        pretrained_classes=classes,
        fixed_input=fixed,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
    )


def _torchvision_weights(name: str, arch: str, enum: Any, member: str) -> Any:
    """The member of ``arch``'s own weights ``enum`` that ``member`` (``<Enum>.<MEMBER>`` or a bare ``<MEMBER>``)
    names. The enum part is checked, not skipped: ``resnet18@ResNet50_Weights.IMAGENET1K_V1`` would otherwise load
    ResNet-18's weights under a name that says ResNet-50's."""
    listed = ", ".join(f"{enum.__name__}.{m.name}" for m in enum) + f" (DEFAULT is {enum.DEFAULT.name})"
    if not member:
        raise RayexpError(
            f"{name}: no weights after '@'; name them as {TORCHVISION}{arch}@{enum.__name__}.<MEMBER> ({listed}), "
            "or leave '@' out for the default weights"
        )
    enum_name, _, member_name = member.rpartition(".")
    if enum_name and enum_name != enum.__name__:
        raise RayexpError(
            f"{name}: {enum_name} is not the weights enum of {arch}; {arch}'s is {enum.__name__}: {listed}"
        )
    try:
        return enum[member_name]
    except KeyError:
        raise RayexpError(f"{name}: {enum.__name__} has no member {member_name!r}; it has {listed}") from None


def _timm():
    try:
        import timm
    except ImportError:
        raise RayexpError(f"timm backbones need timm, which is not installed: {TIMM_EXTRA}") from None
    return timm


def _timm_spec(name: str) -> BackboneSpec:
    import torch

    timm = _timm()
    model_name = name[len(TIMM) :]
    arch, _, tag = model_name.partition(".")
    if not timm.is_model(arch):
        raise RayexpError(f"unknown timm model {arch!r} in {name!r}{_close(arch, timm.list_models())}")
    try:
        cfg = timm.models.get_pretrained_cfg(model_name)
    except RuntimeError:  # timm's "Invalid pretrained tag"
        cfg = None
    if cfg is None:
        tags = timm.list_pretrained(f"{arch}.*")
        raise RayexpError(
            f"{name}: timm has no pretrained tag {tag!r} for {arch}; "
            + (f"its tags: {', '.join(tags)}" if tags else "it has no pretrained weights")
        )
    classes = cfg.num_classes if cfg.num_classes is not None else 1000
    with torch.device("meta"):
        model = timm.create_model(model_name, pretrained=False, num_classes=classes)
        dynamic = False
        if cfg.fixed_input_size:  # a ViT whose timm class can interpolate its position embeddings takes any size
            try:
                model = timm.create_model(model_name, pretrained=False, num_classes=classes, dynamic_img_size=True)
                dynamic = True
            except TypeError:
                pass
    params_m = round(sum(p.numel() for p in model.parameters()) / 1e6, 2)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    input_hw = tuple(cfg.input_size[1:])
    min_hw = tuple((cfg.min_input_size or (3, MIN_SIDE, MIN_SIDE))[1:])
    full = f"{arch}.{cfg.tag}" if cfg.tag else arch
    url = f"https://huggingface.co/{cfg.hf_hub_id}/resolve/main/model.safetensors" if cfg.hf_hub_id else cfg.url
    classifier = cfg.classifier if isinstance(cfg.classifier, str) else (cfg.classifier or ("",))[0]
    return BackboneSpec(
        name=name,
        title=f"{full} (timm)",
        builder=full,
        weights=full,
        weights_file=f"{full}.safetensors" if cfg.hf_hub_id else os.path.basename(url or f"{full}.pth"),
        imagenet_top1=None,
        params_m=params_m,
        family="transformer" if patch is not None else "other",
        head=classifier or "",
        feature_dim=getattr(model, "num_features", None),
        min_input=max(MIN_SIDE, *min_hw),
        batch_size=default_batch_size(params_m),
        origin="timm",
        url=url,
        hub_id=cfg.hf_hub_id,
        pretrained_classes=classes,
        fixed_input=input_hw if cfg.fixed_input_size and not dynamic else None,
        multiple_of=int(patch[0]) if dynamic and patch else 1,
        dynamic_size=dynamic,
        mean=tuple(float(v) for v in cfg.mean),
        std=tuple(float(v) for v in cfg.std),
    )


def _strip_random(name: str) -> tuple[str, bool]:
    """``name`` without its ``+random`` suffixes (``x+random+random`` is ``x+random``), and whether it had one."""
    base = name
    while base.endswith(RANDOM_SUFFIX) and len(base) > len(RANDOM_SUFFIX):
        base = base[: -len(RANDOM_SUFFIX)]
    return base, base != name


def _plain_name(spec: BackboneSpec) -> str:
    """``spec``'s name without weights: the source's prefix and the architecture (the registry's: its name)."""
    if spec.origin == "torchvision":
        return TORCHVISION + spec.builder
    if spec.origin == "timm":
        return TIMM + spec.builder.partition(".")[0]
    return spec.name


def _is_default(spec: BackboneSpec) -> bool:
    """Whether ``spec`` (pretrained, torchvision's or timm's) has its architecture's default weights: torchvision's
    ``DEFAULT`` member, timm's default pretrained tag (its pretrained config without a tag: no model is built)."""
    arch = spec.builder.partition(".")[0]
    if spec.origin == "torchvision":
        import torchvision.models as models

        default = models.get_model_weights(arch).DEFAULT
        return spec.weights == f"{type(default).__name__}.{default.name}"
    cfg = _timm().models.get_pretrained_cfg(arch)
    return cfg is not None and spec.builder == (f"{arch}.{cfg.tag}" if cfg.tag else arch)


def trains_as(spec: BackboneSpec) -> tuple:
    """What decides the network a trial trains, whatever it is called: the builder (the registry's are
    torchvision's, and WaveMix, ours) and the weights; from random init, what the weights would have set instead
    (the published head's classes, the input size and normalisation), as the weights are never loaded. Two names
    with the same value train the same network twice."""
    family = "timm" if spec.origin == "timm" else "torchvision"
    if spec.random_init:
        drawn = (spec.pretrained_classes, spec.fixed_input, spec.dynamic_size, spec.mean, spec.std)
        return (family, spec.builder, "random", *drawn)
    return (family, spec.builder, spec.weights)


@functools.lru_cache(maxsize=None)
def canonical_name(name: str) -> str:
    """The one name of the network ``name`` trains (an error, as :func:`get_spec`'s, for a name that resolves to
    none): the plain name for the default weights (``torchvision:resnet50`` for ``…@ResNet50_Weights.DEFAULT``
    and ``…@ResNet50_Weights.IMAGENET1K_V2``, ``timm:resnet18`` for ``timm:resnet18.a1_in1k``), the enum written
    out for a bare member, ``+random`` once, and without weights where from random init they change nothing.
    Registry names are their own. Canonical, because the name is the trial key's: two spellings would be two
    backbones in a sweep, and an experiment resumed under another spelling would train it again."""
    base, random_init = _strip_random(name)
    spec = get_spec(base)
    if spec.origin == "registry":
        canonical = base
    elif _is_default(spec):
        canonical = _plain_name(spec)
    else:
        canonical = f"{_plain_name(spec)}@{spec.weights}" if spec.origin == "torchvision" else TIMM + spec.builder
    if not random_init:
        return canonical
    plain = _plain_name(spec) + RANDOM_SUFFIX
    if trains_as(get_spec(plain)) == trains_as(get_spec(canonical + RANDOM_SUFFIX)):
        return plain
    return canonical + RANDOM_SUFFIX


def sweep_backbones(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """``--backbones`` as a sweep trains them, checked before any trial key is built: ``(names, notes)``, each name
    canonical (:func:`canonical_name`, a note says so where it was rewritten) and the exact same string given twice
    kept once (a note says so). Every unknown name and every two spellings of one network (one canonical name, or a
    registry name and a source name that train the same network, :func:`trains_as`) are refused together: which
    spelling names the runs is the user's choice, and two spellings usually mean two networks were intended."""
    names = list(names)
    kept: list[str] = []
    notes: list[str] = []
    problems: list[str] = []
    spelled: dict[str, str] = {}  # canonical name -> the spelling given
    networks: dict[tuple, str] = {}  # trains_as -> canonical name
    for index, given in enumerate(names):
        if given in names[:index]:  # the same string again: nothing to choose between, kept once
            if names[:index].count(given) == 1:
                notes.append(f"{given} is given more than once in --backbones; it trains once")
            continue
        try:
            canonical = canonical_name(given)
        except RayexpError as exc:
            problems.append(str(exc))
            continue
        network = trains_as(get_spec(canonical))
        if canonical in spelled or network in networks:
            other = spelled[canonical] if canonical in spelled else spelled[networks[network]]
            what = f"are both {canonical}" if canonical in spelled else "train the same network"
            problems.append(
                f"{other} and {given} in --backbones {what} ({_describe(get_spec(canonical))}): the sweep would "
                "train it twice under two names; drop one of them"
            )
            continue
        spelled[canonical], networks[network] = given, canonical
        kept.append(canonical)
        if canonical != given:
            same = "network" if _strip_random(given)[1] else "weights"
            notes.append(f"{given} is {canonical} (the same {same}); using that name")
    if len(problems) == 1:
        raise RayexpError(problems[0])
    if problems:
        raise RayexpError("--backbones, nothing was started:\n" + "\n".join(f"  - {p}" for p in problems))
    return kept, notes


def _describe(spec: BackboneSpec) -> str:
    """``resnet50 from ResNet50_Weights.IMAGENET1K_V2``, ``resnet50 from random init``: a network in words."""
    return f"{spec.builder} from {'random init' if spec.random_init else spec.weights}"


def list_available(pattern: str | None = None) -> list[BackboneSpec | str]:
    """What ``--list-backbones`` shows: the registry's specs, every torchvision classifier's spec and the timm
    model names that have pretrained weights, each filtered by the shell-style ``pattern`` when one is given."""
    import fnmatch

    import torchvision.models as models

    def wanted(name: str) -> bool:
        return pattern is None or fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(name, f"*{pattern}*")

    out: list[BackboneSpec | str] = [s for s in REGISTRY.values() if wanted(s.name)]
    for arch in models.list_models(module=models):
        if wanted(TORCHVISION + arch):
            try:
                out.append(get_spec(TORCHVISION + arch))
            except RayexpError:
                continue
    try:
        timm = _timm()
    except RayexpError:
        return out
    out += [TIMM + n for n in timm.list_pretrained() if wanted(TIMM + n)]
    return out

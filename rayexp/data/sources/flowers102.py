"""Oxford Flowers-102: ``102flowers.tgz``, ``imagelabels.mat`` and ``setid.mat`` from Oxford VGG.

``102flowers.tgz`` holds ``jpg/image_00001.jpg`` ... ``jpg/image_08189.jpg``; ``imagelabels.mat`` has
``labels`` (1 x 8189, 1-based class of image i); ``setid.mat`` has ``trnid``, ``valid`` and ``tstid``
(1-based image numbers). rayexp trains on train+val (2,040) and tests on test (6,149), as the paper.

Parsed here rather than through torchvision's ``Flowers102``, which verifies the published checksums
on every load and so cannot read a test fixture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from rayexp.data.download import RemoteFile, find_or_extract, verify_checksum
from rayexp.data.records import Source, SourceRecord
from rayexp.errors import RayexpError

DATASETS = ("flowers102",)
BASE_URL = "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/"
# The md5s torchvision's Flowers102 publishes (torchvision/datasets/flowers102.py, _file_dict).
CHECKSUMS = {
    "102flowers.tgz": "md5:52808999861908f626f3c1f4e79d11fa",
    "imagelabels.mat": "md5:e0620be6f572b9609742df49c70aed4d",
    "setid.mat": "md5:a5357ecc9cb78c4bef273ce3793fc85c",
}
# The category names in label order, as TensorFlow Datasets publishes them
# (tensorflow_datasets/image_classification/oxford_flowers102.py, _NAMES); the .mat files carry none.
CLASSES = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
    "moon orchid",
    "bird of paradise",
    "monkshood",
    "globe thistle",
    "snapdragon",
    "colt's foot",
    "king protea",
    "spear thistle",
    "yellow iris",
    "globe-flower",
    "purple coneflower",
    "peruvian lily",
    "balloon flower",
    "giant white arum lily",
    "fire lily",
    "pincushion flower",
    "fritillary",
    "red ginger",
    "grape hyacinth",
    "corn poppy",
    "prince of wales feathers",
    "stemless gentian",
    "artichoke",
    "sweet william",
    "carnation",
    "garden phlox",
    "love in the mist",
    "mexican aster",
    "alpine sea holly",
    "ruby-lipped cattleya",
    "cape flower",
    "great masterwort",
    "siam tulip",
    "lenten rose",
    "barbeton daisy",
    "daffodil",
    "sword lily",
    "poinsettia",
    "bolero deep blue",
    "wallflower",
    "marigold",
    "buttercup",
    "oxeye daisy",
    "common dandelion",
    "petunia",
    "wild pansy",
    "primula",
    "sunflower",
    "pelargonium",
    "bishop of llandaff",
    "gaura",
    "geranium",
    "orange dahlia",
    "pink-yellow dahlia?",
    "cautleya spicata",
    "japanese anemone",
    "black-eyed susan",
    "silverbush",
    "californian poppy",
    "osteospermum",
    "spring crocus",
    "bearded iris",
    "windflower",
    "tree poppy",
    "gazania",
    "azalea",
    "water lily",
    "rose",
    "thorn apple",
    "morning glory",
    "passion flower",
    "lotus",
    "toad lily",
    "anthurium",
    "frangipani",
    "clematis",
    "hibiscus",
    "columbine",
    "desert-rose",
    "tree mallow",
    "magnolia",
    "cyclamen",
    "watercress",
    "canna lily",
    "hippeastrum",
    "bee balm",
    "ball moss",
    "foxglove",
    "bougainvillea",
    "camellia",
    "mallow",
    "mexican petunia",
    "bromelia",
    "blanket flower",
    "trumpet creeper",
    "blackberry lily",
]
SPLITS = {"trnid": "train", "valid": "train", "tstid": "test"}


def remote_files(name: str) -> list[RemoteFile]:
    return [RemoteFile(BASE_URL + f, f, CHECKSUMS[f]) for f in ("102flowers.tgz", "imagelabels.mat", "setid.mat")]


def local_help(name: str) -> str:
    return (
        f"download 102flowers.tgz, imagelabels.mat and setid.mat from {BASE_URL} and pass --source the folder "
        "holding the three (102flowers.tgz may already be extracted there as jpg/)"
    )


def _mat(root: Path, filename: str, keys: tuple[str, ...]) -> dict:
    """A verified .mat file's variables; the labels and the split come only from the published files."""
    path = root / filename
    if not path.is_file():
        raise RayexpError(
            f"expected {filename} in {root} (download it from {BASE_URL}{filename}); point --source at the folder "
            "holding it"
        )
    verify_checksum(path, CHECKSUMS[filename])
    mat = loadmat(path)
    for key in keys:
        if key not in mat:
            raise RayexpError(f"{path} has no variable {key!r}; is it the published {filename}?")
    return mat


def load_source(name: str, root: Path, work: Path, split: str = "default") -> Source:
    base = find_or_extract(
        root, work, "102flowers.tgz", "jpg", BASE_URL + "102flowers.tgz", CHECKSUMS["102flowers.tgz"]
    )
    labels = np.asarray(_mat(root, "imagelabels.mat", ("labels",))["labels"]).ravel().astype(np.int64)
    setid = _mat(root, "setid.mat", tuple(SPLITS))
    if labels.min() < 1 or labels.max() > len(CLASSES):
        raise RayexpError(
            f"{root / 'imagelabels.mat'}: labels should be 1..{len(CLASSES)}, found {labels.min()}..{labels.max()}"
        )

    records: list[SourceRecord] = []
    seen: set[int] = set()
    for key, split_name in SPLITS.items():
        for number in np.asarray(setid[key]).ravel().astype(np.int64):
            if number in seen:
                raise RayexpError(f"{root / 'setid.mat'}: image {number} is listed twice; the split must not overlap")
            seen.add(int(number))
            if not 1 <= number <= len(labels):
                raise RayexpError(f"{root / 'setid.mat'}: {key} names image {number}, outside 1..{len(labels)}")
            rel = f"jpg/image_{number:05d}.jpg"
            if not (base / rel).is_file():
                raise RayexpError(
                    f"image {rel} listed in setid.mat is missing from {base}; is 102flowers.tgz fully extracted?"
                )
            records.append(SourceRecord(base / rel, int(labels[number - 1]) - 1, rel, split=split_name))
    checksums = {f: CHECKSUMS[f] for f in ("imagelabels.mat", "setid.mat")}
    if base == work:
        checksums["102flowers.tgz"] = CHECKSUMS["102flowers.tgz"]
    return Source(list(CLASSES), records, "official: train+val (trnid, valid) vs test (tstid)", checksums=checksums)

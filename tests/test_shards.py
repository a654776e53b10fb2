import hashlib
import importlib.util
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from rayexp.data.catalog import DatasetInfo, get_dataset_info
from rayexp.data.codec import decode_image, stored_size
from rayexp.data.records import Source, SourceRecord
from rayexp.data.rows import fraction_count, holdout_count
from rayexp.data.shards import (
    MANIFEST,
    is_prepared,
    load_manifest,
    manifest_fingerprint,
    read_split,
    row_groups_scanned,
    split_paths,
    verify_dataset,
)
from rayexp.data.sources import digits
from rayexp.data.writer import write_dataset
from rayexp.errors import RayexpError
from tests.conftest import REPO


def _tiny_info(name="tiny", size=(16, 16), encoding="png") -> DatasetInfo:
    return DatasetInfo(name, name, "test", 3, 0, 0, "test", "test", input_size=size, augment=False, encoding=encoding)


def _records(per_class=(7, 5, 3), size=(12, 10)):
    rng = np.random.default_rng(0)
    out = []
    for label, n in enumerate(per_class):
        for i in range(n):
            out.append(SourceRecord(rng.integers(0, 255, (*size, 3), dtype=np.uint8), label, f"c{label}/{i}"))
    return out


def test_digits_round_trip(digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    assert manifest["format_version"] == 3 and manifest["n_classes"] == 10
    assert manifest["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 1797
    assert manifest["splits"]["train"]["rows"] == get_dataset_info("digits").train
    train = read_split(digits_dir, "digits", "train")
    test = read_split(digits_dir, "digits", "test")
    assert train.schema.names == ["image", "label", "id", "rank", "position"]
    assert str(train.schema.field("label").type) == "int32" and str(train.schema.field("rank").type) == "int32"
    assert str(train.schema.field("position").type) == "double"
    # every source image is in exactly one split, with its label
    source = {r.id: r for r in digits.load_source("digits").records}
    ids = train["id"].to_pylist() + test["id"].to_pylist()
    assert sorted(ids) == sorted(source)
    row = train.slice(0, 1).to_pylist()[0]
    pixels = decode_image(row["image"])
    assert pixels.shape == (8, 8, 3)  # stored at native size, never upscaled
    expected = np.clip(np.round(source[row["id"]].image * 1.0), 0, 255)
    assert np.array_equal(pixels[..., 0], expected.astype(np.uint8)) and row["label"] == source[row["id"]].label
    # stratified 80/20: each class's test share is 20% +- one image
    for c, (n_train, n_test) in enumerate(
        zip(manifest["splits"]["train"]["class_counts"], manifest["splits"]["test"]["class_counts"])
    ):
        assert abs(n_test - 0.2 * (n_train + n_test)) <= 1, c
    mean = manifest["normalization"]["mean"]
    assert len(mean) == 3 and 0 < mean[0] < 1 and mean[0] == mean[1] == mean[2]  # grayscale stored as RGB


def test_fractions_are_stratified_nested_and_keep_one_per_class(digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    counts = manifest["splits"]["train"]["class_counts"]
    subsets = {}
    for fraction in (0.001, 0.01, 0.1, 0.5, 1.0):
        table = read_split(digits_dir, "digits", "train", fraction)
        labels = np.array(table["label"].to_pylist())
        assert np.bincount(labels, minlength=10).tolist() == [fraction_count(n, fraction) for n in counts]
        subsets[fraction] = set(table["id"].to_pylist())
    assert all(np.bincount(np.array(read_split(digits_dir, "digits", "train", 0.001)["label"].to_pylist())) == 1)
    ordered = [subsets[f] for f in (0.001, 0.01, 0.1, 0.5, 1.0)]
    assert all(small < big for small, big in zip(ordered, ordered[1:]))


# sha256 (first 16 hex digits) of the sorted ids of digits (seed 0) a fraction selects, as format 2 (stored
# sorted by rank, pruned by rank) selected them: the stored order and the pruning bound changed, the rows must not.
FORMAT_2_FRACTION_IDS = {
    (0.01, "all"): (20, "df9f8b2f1c2dd18b"),
    (0.01, "train"): (10, "537d27f4d3047237"),
    (0.01, "val"): (10, "c9cd6cd508ccd679"),
    (0.1, "all"): (149, "ad791a03c7a62718"),
    (0.1, "train"): (130, "e44e3510b3859e6d"),
    (0.1, "val"): (19, "d6b2f2deb21f1540"),
    (1.0, "all"): (1438, "4c23c56cbaf3d528"),
    (1.0, "train"): (1295, "4073ab76cb025193"),
    (1.0, "val"): (143, "84d4e6e99aad3241"),
}


def _ids_digest(ids) -> tuple[int, str]:
    ids = sorted(ids)
    return len(ids), hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


def test_fraction_rows_are_the_rank_rule_and_unchanged_by_the_stored_order(digits_dir):
    manifest = load_manifest(digits_dir, "digits")
    counts = manifest["splits"]["train"]["class_counts"]
    every = read_split(digits_dir, "digits", "train", columns=["id", "label", "rank"]).to_pydict()
    for (fraction, part), expected in FORMAT_2_FRACTION_IDS.items():
        ids = read_split(digits_dir, "digits", "train", fraction, columns=["id"], part=part)["id"].to_pylist()
        assert _ids_digest(ids) == expected, (fraction, part)
        # the rule itself, straight from the rank column
        keep = [fraction_count(n, fraction) for n in counts]
        held = [holdout_count(k) if part != "all" else 0 for k in keep]
        lo = [k - h if part == "val" else 0 for k, h in zip(keep, held)]
        hi = [k if part == "val" else k - h for k, h in zip(keep, held)]
        rule = {i for i, c, r in zip(every["id"], every["label"], every["rank"]) if lo[c] <= r < hi[c]}
        assert set(ids) == rule and len(ids) == len(rule), (fraction, part)


def test_fraction_count_is_not_fooled_by_float_error():
    assert fraction_count(150, 0.1) == 15
    assert fraction_count(3, 0.01) == 1
    assert fraction_count(5000, 0.01) == 50


def test_same_seed_same_split_and_ranks(tmp_path):
    source = digits.load_source("digits")
    info = get_dataset_info("digits")
    a = write_dataset(tmp_path / "a", info, source, seed=3)
    write_dataset(tmp_path / "b", info, digits.load_source("digits"), seed=3)
    c = write_dataset(tmp_path / "c", info, digits.load_source("digits"), seed=4)
    tables = {k: read_split(tmp_path / k, "digits", "train", 0.1).to_pydict() for k in "abc"}
    assert tables["a"]["id"] == tables["b"]["id"] and tables["a"]["rank"] == tables["b"]["rank"]
    assert set(tables["a"]["id"]) != set(tables["c"]["id"])
    assert a["seed"] == 3 and c["seed"] == 4


def test_parquet_filter_skips_row_groups(digits_dir):
    kept, total = row_groups_scanned(digits_dir, "digits", 0.1)
    assert total >= 20 and kept <= 3, (kept, total)
    assert row_groups_scanned(digits_dir, "digits", 1.0) == (total, total)
    # and the pruned scan still returns exactly the fraction
    path = load_manifest(digits_dir, "digits")["splits"]["train"]["files"][0]
    assert pq.ParquetFile(digits_dir / "digits" / path).metadata.num_row_groups == total


def test_downscaled_when_larger_never_upscaled(tmp_path):
    assert stored_size((500, 375), (256, 256)) == (341, 256)
    assert stored_size((32, 32), (256, 256)) == (32, 32)
    big = [SourceRecord(np.zeros((40, 30, 3), np.uint8), i % 3, f"x{i}") for i in range(9)]
    write_dataset(tmp_path, _tiny_info(size=(16, 16)), Source(["a", "b", "c"], big, "test", test_fraction=0.34))
    image = decode_image(read_split(tmp_path, "tiny", "train")["image"][0].as_py())
    assert image.shape == (21, 16, 3)


def test_modes_are_converted_to_rgb(tmp_path):
    gray16 = Image.fromarray((np.arange(144, dtype=np.uint16).reshape(12, 12) * 400))
    assert gray16.mode.startswith("I")
    buf = io.BytesIO()
    Image.new("CMYK", (12, 12), (0, 255, 0, 0)).save(buf, format="JPEG")
    palette = Image.new("P", (12, 12), 3)
    records = [SourceRecord(gray16, 0, "g"), SourceRecord(buf.getvalue(), 1, "cmyk"), SourceRecord(palette, 2, "p")] * 3
    records = [
        SourceRecord(r.image, r.label, f"{r.id}{i}", "train" if i < 6 else "test") for i, r in enumerate(records)
    ]
    write_dataset(tmp_path, _tiny_info(), Source(["a", "b", "c"], records, "given"))
    for data in read_split(tmp_path, "tiny", "train")["image"].to_pylist():
        assert decode_image(data).shape == (12, 12, 3)


def _listing(path):
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


def test_corrupt_image_names_the_file_and_leaves_nothing(tmp_path):
    records = _records()
    records[4] = SourceRecord(b"not an image", 0, "c0/broken.png")
    with pytest.raises(RayexpError, match="c0/broken.png"):
        write_dataset(tmp_path, _tiny_info(), Source(["a", "b", "c"], records, "test", test_fraction=0.3))
    assert _listing(tmp_path) == []


def test_label_out_of_range_and_empty_class_fail(tmp_path):
    records = _records()
    records[0] = SourceRecord(records[0].image, 3, "c0/0")
    with pytest.raises(RayexpError, match="label 3, outside 0..2"):
        write_dataset(tmp_path, _tiny_info(), Source(["a", "b", "c"], records, "test", test_fraction=0.3))
    only_two = [r for r in _records() if r.label != 2]
    with pytest.raises(RayexpError, match="classes with no images: c"):
        write_dataset(tmp_path, _tiny_info(), Source(["a", "b", "c"], only_two, "test", test_fraction=0.3))
    assert _listing(tmp_path) == []


def test_idempotent_unless_forced(tmp_path):
    source = Source(["a", "b", "c"], _records(), "test", test_fraction=0.3)
    first = write_dataset(tmp_path, _tiny_info(), source)
    with pytest.raises(RayexpError, match="already prepared.*--force"):
        write_dataset(tmp_path, _tiny_info(), source)
    second = write_dataset(
        tmp_path, _tiny_info(), Source(["a", "b", "c"], _records(), "test", test_fraction=0.3), force=True
    )
    assert first["splits"] == second["splits"]
    assert _listing(tmp_path) == ["tiny"]
    assert json.loads((tmp_path / "tiny" / "manifest.json").read_text())["splits"] == second["splits"]


def test_unprepared_dataset_error_says_how_to_prepare(tmp_path):
    with pytest.raises(RayexpError, match=r"not prepared.*python datasets/prepare.py cifar10"):
        load_manifest(tmp_path, "cifar10")


def test_a_uri_data_dir_reads_like_a_path(digits_dir):
    """A bucket URI works wherever a local data dir does when reading shards; file:// exercises the same code."""
    uri = digits_dir.as_uri()
    assert is_prepared(uri, "digits") and not is_prepared(uri, "cifar10")
    manifest = load_manifest(uri, "digits")
    assert all(p.startswith("file://") for p in split_paths(uri, manifest, "train"))
    assert read_split(uri, "digits", "train", 0.1).num_rows == read_split(digits_dir, "digits", "train", 0.1).num_rows
    with pytest.raises(RayexpError, match="not prepared .* then copy the folder to the bucket"):
        load_manifest(uri, "cifar10")


def _as_format_2(folder) -> None:
    """Turn a prepared dataset into what rayexp wrote in shard format 2: no position column, each split
    sorted by (rank, label), the manifest's checksums and fingerprint to match."""
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    for meta in manifest["splits"].values():
        for rel in meta["files"]:
            table = pq.read_table(folder / rel).drop_columns(["position"])
            table = table.take(pc.sort_indices(table, sort_keys=[("rank", "ascending"), ("label", "ascending")]))
            pq.write_table(table, folder / rel, row_group_size=64, compression="none")
            meta["sha256"][rel] = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
            meta["bytes"][rel] = (folder / rel).stat().st_size
    manifest["format_version"] = 2
    manifest["fingerprint"] = manifest_fingerprint(manifest)
    path.write_text(json.dumps(manifest, indent=2))


def test_a_format_2_dataset_is_refused_by_readers_and_prepared_again(digits_dir, tmp_path, capsys):
    """``make demo`` runs ``datasets/prepare.py digits`` on machines that may hold digits in format 2."""
    data = tmp_path / "data"
    shutil.copytree(digits_dir / "digits", data / "digits")
    _as_format_2(data / "digits")
    old = json.loads((data / "digits" / MANIFEST).read_text())
    with pytest.raises(
        RayexpError, match=r"has shard format 2, this rayexp reads 3; .*python datasets/prepare.py digits --force"
    ):
        load_manifest(data, "digits")
    with pytest.raises(RayexpError, match="no position column .*python datasets/prepare.py digits --force"):
        verify_dataset(data / "digits", old)
    old_train = pa.concat_tables(
        pq.read_table(data / "digits" / rel) for rel in old["splits"]["train"]["files"]
    ).to_pydict()

    spec = importlib.util.spec_from_file_location("prepare_cli", REPO / "datasets" / "prepare.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    capsys.readouterr()
    assert cli.main(["digits", "--data-dir", str(data), "--workers", "1"]) == 0
    out, err = capsys.readouterr()
    said = [line for line in err.splitlines() if "shard format" in line]
    assert said == ["[rayexp] digits: prepared in shard format 2, this rayexp reads format 3; preparing it again"], err
    assert "prepared in" in out and "already prepared" not in out
    manifest = load_manifest(data, "digits")
    assert manifest["format_version"] == 3
    verify_dataset(data / "digits", manifest)
    # the same rows in every fraction as the format-2 copy's rank rule gave
    counts = manifest["splits"]["train"]["class_counts"]
    for fraction in (0.01, 0.1, 1.0):
        before = {
            i
            for i, c, r in zip(old_train["id"], old_train["label"], old_train["rank"])
            if r < fraction_count(counts[c], fraction)
        }
        assert set(read_split(data, "digits", "train", fraction, columns=["id"])["id"].to_pylist()) == before
    assert cli.main(["digits", "--data-dir", str(data), "--workers", "1"]) == 0
    assert "already prepared" in capsys.readouterr().out


def test_verification_checks_positions_and_their_order(digits_dir, tmp_path):
    folder = tmp_path / "digits"
    shutil.copytree(digits_dir / "digits", folder)
    manifest = load_manifest(tmp_path, "digits")
    part = folder / manifest["splits"]["train"]["files"][0]
    table = pq.read_table(part)

    def rewrite(new):
        pq.write_table(new, part, row_group_size=64, compression="none")

    counts = np.array(manifest["splits"]["train"]["class_counts"])
    off = table["rank"].to_numpy() / counts[table["label"].to_numpy()]  # rank / n, not (rank + 0.5) / n: still sorted
    rewrite(table.set_column(table.schema.get_field_index("position"), "position", pa.array(off)))
    with pytest.raises(
        RayexpError, match=r"train split .*position is not \(rank \+ 0.5\) / its class's count; .*--force"
    ):
        verify_dataset(folder, manifest, checksums=False)
    rewrite(table.take(pa.array(np.arange(table.num_rows)[::-1])))
    with pytest.raises(RayexpError, match=r"train split .*not in stratified order.*--force"):
        verify_dataset(folder, manifest, checksums=False)
    rewrite(table)
    verify_dataset(folder, manifest, checksums=False)


def _prepare_cli():
    spec = importlib.util.spec_from_file_location("prepare_cli_list", REPO / "datasets" / "prepare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_list_shows_images_download_size_and_the_fix_per_kind(digits_dir, tmp_path, capsys):
    """--list: each dataset's images (the paper's train + test) and its download size ("?" where
    no source sizes the file rayexp fetches: never guessed), and the same fix the sweeps' preflight gives."""
    from rayexp.data.catalog import CATALOG
    from rayexp.preflight import missing_dataset

    prepare_cli = _prepare_cli()
    assert prepare_cli.main(["--list", "--data-dir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:5] == ["dataset", "domain", "images", "download", "prepared"]
    rows = {line.split()[0]: line for line in lines[1:] if not line.startswith(" ")}
    assert set(rows) == set(CATALOG)
    assert "60,000" in rows["cifar10"] and "16,185" in rows["stanford_cars"] and "1,797" in rows["digits"]
    for name, info in CATALOG.items():
        size = "bundled" if name == "digits" else info.download_size or "?"
        assert f"{info.images:,} {size:>9} no" in rows[name], rows[name]
    assert rows["cifar10"].endswith(f"python datasets/prepare.py cifar10 --data-dir {tmp_path} --download")
    assert rows["neu"].endswith(f"python datasets/prepare.py neu --data-dir {tmp_path} --source PATH")
    at = lines.index(rows["neu"])
    assert lines[at + 1].strip().startswith("PATH: NEU surface defect database has no stable download")
    # one source of truth: the preflight's fix says the same
    assert f"run: python datasets/prepare.py neu --data-dir {tmp_path} --source PATH" in missing_dataset(
        "neu", str(tmp_path)
    )
    # a prepared dataset shows its rows instead
    assert prepare_cli.main(["--list", "--data-dir", str(digits_dir)]) == 0
    digits_row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("digits "))
    assert " yes " in digits_row and "1438/359" in digits_row

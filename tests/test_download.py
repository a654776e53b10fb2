"""Downloads against a real HTTP server on loopback, and safe archive extraction."""

import hashlib
import http.server
import io
import os
import stat
import tarfile
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
from PIL import Image

from rayexp.data.download import RemoteFile, download, find_or_extract, safe_extract
from rayexp.data.preparation import prepare
from rayexp.data.shards import load_manifest
from rayexp.data.sources import eurosat
from rayexp.errors import RayexpError


@pytest.fixture()
def http_folder(tmp_path):
    """Serve tmp_path/www on 127.0.0.1 for the test; yields (folder, base URL)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_download_verifies_checksum_and_is_reused(http_folder, tmp_path):
    folder, base = http_folder
    data = _tar_bytes({"x/a.txt": b"hello"})
    (folder / "x.tar.gz").write_bytes(data)
    remote = RemoteFile(f"{base}/x.tar.gz", "x.tar.gz", "md5:" + hashlib.md5(data).hexdigest())
    path = download(remote, tmp_path / "dl", quiet=True)
    assert path.read_bytes() == data
    (folder / "x.tar.gz").unlink()  # a verified file already there is not fetched again
    assert download(remote, tmp_path / "dl", quiet=True) == path


def test_checksum_mismatch_is_refused_and_leaves_nothing(http_folder, tmp_path):
    folder, base = http_folder
    (folder / "x.tar.gz").write_bytes(b"tampered")
    remote = RemoteFile(f"{base}/x.tar.gz", "x.tar.gz", "sha256:" + "0" * 64)
    with pytest.raises(RayexpError, match="checksum mismatch.*expected sha256 0000"):
        download(remote, tmp_path / "dl", quiet=True)
    assert list((tmp_path / "dl").iterdir()) == []


def test_unreachable_url_and_unknown_checksum_say_what_to_do(http_folder, tmp_path):
    _, base = http_folder
    with pytest.raises(RayexpError, match="download it yourself and pass --source"):
        download(RemoteFile(f"{base}/missing.zip", "missing.zip", "md5:" + "0" * 32), tmp_path, quiet=True)
    with pytest.raises(RayexpError, match="no published checksum"):
        download(RemoteFile(f"{base}/x.zip", "x.zip", None), tmp_path, quiet=True)


@pytest.mark.parametrize("evil", ["../outside.txt", "/abs/outside.txt", "a/../../outside.txt"])
def test_safe_extract_refuses_paths_outside(tmp_path, evil):
    tar_path = tmp_path / "evil.tar.gz"
    tar_path.write_bytes(_tar_bytes({"ok.txt": b"1", evil: b"2"}))
    with pytest.raises(RayexpError, match="outside the target"):
        safe_extract(tar_path, tmp_path / "out")
    assert not (tmp_path / "outside.txt").exists()
    zip_path = tmp_path / "evil.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("ok.txt", "1")
        zf.writestr(evil, "2")
    with pytest.raises(RayexpError, match="outside the target"):
        safe_extract(zip_path, tmp_path / "out2")


def test_safe_extract_refuses_links_out(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    (tmp_path / "l.tar").write_bytes(buffer.getvalue())
    with pytest.raises(RayexpError, match="link pointing outside"):
        safe_extract(tmp_path / "l.tar", tmp_path / "out")


def test_find_or_extract(tmp_path):
    root, work = tmp_path / "root", tmp_path / "work"
    root.mkdir()
    work.mkdir()
    with pytest.raises(
        RayexpError, match=r"expected data.tar.gz or its extracted data/a.txt in .*root \(download it from http://x\)"
    ):
        find_or_extract(root, work, "data.tar.gz", "data/a.txt", url="http://x")
    data = _tar_bytes({"data/a.txt": b"1"})
    (root / "data.tar.gz").write_bytes(data)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        find_or_extract(root, work, "data.tar.gz", "data/a.txt", checksum="md5:" + "0" * 32)
    assert (
        find_or_extract(root, work, "data.tar.gz", "data/a.txt", checksum="md5:" + hashlib.md5(data).hexdigest())
        == work
    )
    assert (work / "data" / "a.txt").read_bytes() == b"1"


def _eurosat_zip(path, per_class=4):
    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("AnnualCrop", "Forest"):
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(buffer, format="JPEG")
                zf.writestr(f"2750/{cls}/{cls}_{i + 1}.jpg", buffer.getvalue())


def test_prepare_download_end_to_end_and_checksum_mismatch(http_folder, tmp_path, monkeypatch):
    folder, base = http_folder
    _eurosat_zip(folder / "EuroSAT.zip")
    digest = hashlib.md5((folder / "EuroSAT.zip").read_bytes()).hexdigest()
    monkeypatch.setattr(eurosat, "URL", f"{base}/EuroSAT.zip")
    monkeypatch.setattr(eurosat, "CHECKSUMS", {"EuroSAT.zip": "md5:" + "f" * 32})
    with pytest.raises(RayexpError, match="checksum mismatch"):
        prepare("eurosat", tmp_path / "data", download_files=True, workers=1, quiet=True)
    assert not (tmp_path / "data" / "eurosat").exists()
    assert list((tmp_path / "data" / ".downloads" / "eurosat").iterdir()) == []  # the bad file is gone
    monkeypatch.setattr(eurosat, "CHECKSUMS", {"EuroSAT.zip": "md5:" + digest})
    manifest = prepare("eurosat", tmp_path / "data", download_files=True, workers=1, quiet=True)
    assert manifest["source_checksums"]["EuroSAT.zip"] == "md5:" + digest
    assert (
        load_manifest(tmp_path / "data", "eurosat")["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 8
    )
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads", "eurosat"]  # no scratch left


def _tar_of(path, members):
    """Write an uncompressed tar of ``members``: (name, kind, payload) with kind "file" (payload bytes),
    "dir", "symlink" or "hardlink" (payload the link name), or a tarfile type constant."""
    with tarfile.open(path, "w") as tf:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = len(payload)
                tf.addfile(info, io.BytesIO(payload))
                continue
            types = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE}
            info.type = types.get(kind, kind)
            if kind in ("symlink", "hardlink"):
                info.linkname = payload
            tf.addfile(info)
    return path


def _new_entries(folder, before):
    return sorted(p.name for p in folder.iterdir() if p.name not in before)


def test_cve_2025_4517_layout_is_refused_and_writes_nothing_outside(tmp_path):
    """Long directory names behind one-letter links push realpath past PATH_MAX, so a link climbing out of the
    target was never expanded by tarfile's "data" filter: on Python 3.11.7 the file below it landed outside."""
    target = tmp_path / "t"
    steps = "abcdefghijklmnop"
    room = os.pathconf(tmp_path, "PC_PATH_MAX") - len(str(target)) - 1
    comp = "d" * min(247, room // (len(steps) + 1))
    members, prefix = [], ""
    for step in steps:
        members += [(prefix + comp, "dir", None), (prefix + step, "symlink", comp)]
        prefix += comp + "/"
    linkpath = "/".join(steps) + "/" + "l" * 254
    members += [
        (linkpath, "symlink", "../" * len(steps)),
        ("escape", "symlink", linkpath + "/.."),
        ("escape/pwned.txt", "file", b"outside"),
    ]
    archive = _tar_of(tmp_path / "cve.tar", members)
    with pytest.raises(RayexpError, match=r"cve.tar: member 'a' is a symbolic link.*refusing the archive"):
        safe_extract(archive, target)
    assert _new_entries(tmp_path, {"cve.tar"}) == ["t"]
    assert not (tmp_path / "pwned.txt").exists()


def test_symlink_chain_is_refused_by_us_not_by_tarfile(tmp_path):
    archive = _tar_of(tmp_path / "chain.tar", [("a", "symlink", "."), ("b", "symlink", "a/.."), ("b/x", "file", b"x")])
    with pytest.raises(RayexpError, match=r"chain.tar: member 'a' is a symbolic link to '\.'.*refusing the archive"):
        safe_extract(archive, tmp_path / "t")
    assert _new_entries(tmp_path, {"chain.tar"}) == ["t"]


def test_hard_link_to_an_earlier_member_extracts_as_a_copy(tmp_path):
    members = [("data/a.txt", "file", b"abc"), ("data/sub/b.txt", "hardlink", "data/a.txt")]
    archive = _tar_of(tmp_path / "h.tar", members)
    safe_extract(archive, tmp_path / "t")
    a, b = tmp_path / "t" / "data" / "a.txt", tmp_path / "t" / "data" / "sub" / "b.txt"
    assert a.read_bytes() == b.read_bytes() == b"abc"
    assert a.stat().st_ino != b.stat().st_ino and a.stat().st_nlink == b.stat().st_nlink == 1


@pytest.mark.parametrize("linkname", ["../outside.txt", "ABSOLUTE", "later.txt", "missing.txt", "data"])
def test_hard_link_outside_or_not_yet_extracted_is_refused(tmp_path, linkname):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"keep")
    linkname = str(outside) if linkname == "ABSOLUTE" else linkname
    archive = _tar_of(
        tmp_path / "h.tar",
        [("data/", "dir", None), ("link.txt", "hardlink", linkname), ("later.txt", "file", b"later")],
    )
    with pytest.raises(RayexpError, match=r"h.tar: member 'link.txt' is a hard link to .*refusing the archive"):
        safe_extract(archive, tmp_path / "t")
    assert outside.read_bytes() == b"keep" and outside.stat().st_nlink == 1
    assert not (tmp_path / "t" / "link.txt").exists()


@pytest.mark.parametrize(
    ("kind", "what"),
    [(tarfile.FIFOTYPE, "a FIFO"), (tarfile.CHRTYPE, "a character device"), (tarfile.BLKTYPE, "a block device")],
)
def test_special_files_are_refused(tmp_path, kind, what):
    archive = _tar_of(tmp_path / "s.tar", [("ok.txt", "file", b"1"), ("dev", kind, None)])
    with pytest.raises(RayexpError, match=f"s.tar: member 'dev' is {what}, not a file or a directory; refusing"):
        safe_extract(archive, tmp_path / "t")


def test_zip_symlink_and_escaping_entries_are_refused(tmp_path):
    link_zip = tmp_path / "link.zip"
    with zipfile.ZipFile(link_zip, "w") as zf:
        info = zipfile.ZipInfo("link")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, str(tmp_path / "outside.txt"))
        zf.writestr("link/pwned.txt", "x")
    with pytest.raises(RayexpError, match=r"link.zip: member 'link' is a symbolic link.*refusing the archive"):
        safe_extract(link_zip, tmp_path / "t")
    assert not (tmp_path / "t" / "link").exists()
    evil_zip = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil_zip, "w") as zf:
        zf.writestr("ok.txt", "1")
        zf.writestr("../evil", "2")
    with pytest.raises(RayexpError, match=r"evil.zip: member '\.\./evil' has a path outside the target.*refusing"):
        safe_extract(evil_zip, tmp_path / "t2")
    assert _new_entries(tmp_path, {"link.zip", "evil.zip"}) == ["t", "t2"]


@pytest.mark.parametrize("fmt", ["tar", "zip"])
def test_planted_symlink_in_target_is_replaced_never_followed(tmp_path, fmt):
    outside, outdir = tmp_path / "outside.txt", tmp_path / "outdir"
    outside.write_bytes(b"keep")
    outdir.mkdir()
    target = tmp_path / "t"
    target.mkdir()
    (target / "data.txt").symlink_to(outside)
    (target / "sub").symlink_to(outdir)
    first, second = tmp_path / f"first.{fmt}", tmp_path / f"second.{fmt}"
    if fmt == "tar":
        _tar_of(first, [("data.txt", "file", b"new")])
        _tar_of(second, [("sub/x.txt", "file", b"x")])
    else:
        with zipfile.ZipFile(first, "w") as zf:
            zf.writestr("data.txt", "new")
        with zipfile.ZipFile(second, "w") as zf:
            zf.writestr("sub/x.txt", "x")
    safe_extract(first, target)
    assert not (target / "data.txt").is_symlink() and (target / "data.txt").read_bytes() == b"new"
    assert outside.read_bytes() == b"keep"
    with pytest.raises(RayexpError, match=r"member 'sub/x.txt' would go through 'sub'.*not a directory; refusing the"):
        safe_extract(second, target)
    assert list(outdir.iterdir()) == []


def test_extracted_modes_are_plain(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tf:
        info = tarfile.TarInfo("bin/tool")
        info.size, info.mode = 2, 0o6777
        tf.addfile(info, io.BytesIO(b"#!"))
    (tmp_path / "m.tar").write_bytes(buffer.getvalue())
    safe_extract(tmp_path / "m.tar", tmp_path / "t")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "t" / "bin" / "tool").stat().st_mode) == 0o644 & ~umask
    assert stat.S_IMODE((tmp_path / "t" / "bin").stat().st_mode) == 0o755 & ~umask

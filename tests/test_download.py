"""Downloads against a real HTTP server on loopback, and safe archive extraction."""

import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from functools import partial

import pytest

from rayexp.data.download import RemoteFile, download, find_or_extract, safe_extract
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
    with pytest.raises(RayexpError, match=r"expected data.tar.gz or its extracted data/a.txt in .*root \(download it from http://x\)"):
        find_or_extract(root, work, "data.tar.gz", "data/a.txt", url="http://x")
    data = _tar_bytes({"data/a.txt": b"1"})
    (root / "data.tar.gz").write_bytes(data)
    with pytest.raises(RayexpError, match="checksum mismatch"):
        find_or_extract(root, work, "data.tar.gz", "data/a.txt", checksum="md5:" + "0" * 32)
    assert find_or_extract(root, work, "data.tar.gz", "data/a.txt", checksum="md5:" + hashlib.md5(data).hexdigest()) == work
    assert (work / "data" / "a.txt").read_bytes() == b"1"


def _eurosat_zip(path, per_class=4):
    import numpy as np
    from PIL import Image

    with zipfile.ZipFile(path, "w") as zf:
        for cls in ("AnnualCrop", "Forest"):
            for i in range(per_class):
                buffer = io.BytesIO()
                Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(buffer, format="JPEG")
                zf.writestr(f"2750/{cls}/{cls}_{i + 1}.jpg", buffer.getvalue())


def test_prepare_download_end_to_end_and_checksum_mismatch(http_folder, tmp_path, monkeypatch):
    from rayexp.data.preparation import prepare
    from rayexp.data.shards import load_manifest
    from rayexp.data.sources import eurosat

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
    assert load_manifest(tmp_path / "data", "eurosat")["splits"]["train"]["rows"] + manifest["splits"]["test"]["rows"] == 8
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".downloads", "eurosat"]  # no scratch left

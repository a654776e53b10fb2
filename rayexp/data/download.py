"""Getting source files: download with a verified checksum, and extract archives safely.

Shared by every source module. Downloads go to ``<data_dir>/.downloads/<dataset>/`` and are verified
against the checksum the source module declares; a mismatch deletes the file and stops. Archives are
extracted member by member, refusing any path that would land outside the target (absolute paths,
``..``, links pointing out).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from rayexp.errors import RayexpError


@dataclass(frozen=True)
class RemoteFile:
    """One file a source can download: its URL, the name to save it as, and its checksum.

    ``checksum`` is ``"md5:<hex>"`` or ``"sha256:<hex>"`` as published by the host (or as first recorded
    by this project); None only where no checksum is known, in which case the file is not downloaded
    automatically and the user is told where to get it.
    """

    url: str
    filename: str
    checksum: str | None


def file_digest(path: str | os.PathLike, algorithm: str = "sha256", chunk: int = 1 << 20) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, checksum: str) -> None:
    """Raise naming the file, expected and actual digest, if ``path`` does not match ``checksum``."""
    algorithm, _, expected = checksum.partition(":")
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise RayexpError(
            f"checksum mismatch for {path}: expected {algorithm} {expected}, got {actual}; "
            "the file is corrupt or not the published one: delete it and download it again"
        )


def download(remote: RemoteFile, folder: str | os.PathLike, quiet: bool = False) -> Path:
    """Download ``remote`` into ``folder`` (kept if already there and verified); returns its path."""
    if remote.checksum is None:
        raise RayexpError(f"{remote.filename} has no published checksum to verify a download against; download {remote.url} yourself and pass --source")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / remote.filename
    if target.exists():
        try:
            verify_checksum(target, remote.checksum)
            return target
        except RayexpError:
            target.unlink()
    partial = target.with_name(target.name + ".partial")
    try:
        with urllib.request.urlopen(remote.url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            while block := response.read(1 << 20):
                out.write(block)
                done += len(block)
                if not quiet and sys.stderr.isatty():
                    share = f" ({100 * done / total:.0f}%)" if total else ""
                    print(f"\rdownloading {remote.filename}: {done / 1e6:.1f} MB{share}", end="", file=sys.stderr, flush=True)
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise RayexpError(f"downloading {remote.url} failed ({getattr(exc, 'reason', exc)}); download it yourself and pass --source") from None
    try:
        verify_checksum(partial, remote.checksum)
    except RayexpError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(target)
    return target


def _inside(root: Path, candidate: Path) -> bool:
    try:
        candidate.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .tar(.gz/.bz2/.xz), .tgz or .zip into ``target``, refusing members that escape it."""
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                if not _inside(target, target / member.filename):
                    raise RayexpError(f"archive {archive} has a member outside the target: {member.filename!r}; refusing to extract it")
            zf.extractall(target)
        return target
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:
                if not _inside(target, target / member.name):
                    raise RayexpError(f"archive {archive} has a member outside the target: {member.name!r}; refusing to extract it")
                if member.issym() or member.islnk():
                    link = (target / member.name).parent / member.linkname if member.issym() else target / member.linkname
                    if not _inside(target, link):
                        raise RayexpError(f"archive {archive} has a link pointing outside the target: {member.name!r} -> {member.linkname!r}")
                if member.isdev():
                    raise RayexpError(f"archive {archive} has a device file {member.name!r}; refusing to extract it")
            tf.extractall(target, members=members, filter="data")
        return target
    raise RayexpError(f"{archive} is neither a tar nor a zip archive")


def materialize(path: str | os.PathLike, work: str | os.PathLike) -> Path:
    """A folder holding ``path``'s content: the folder itself, or an archive safely extracted under ``work``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RayexpError(f"{path} does not exist; point --source at the downloaded folder or archive")
    if path.is_dir():
        return path
    return safe_extract(path, Path(work) / path.name.split(".")[0])



def find_or_extract(root: Path, work: Path, archive: str, marker: str, url: str | None = None, checksum: str | None = None) -> Path:
    """The folder under which ``marker`` (a relative path) exists: ``root``, or ``work`` after extracting
    ``root/archive`` there (verifying ``checksum`` first when given).

    The error for neither names the file expected, where, and where to get it.
    """
    for folder in (root, work):
        if (folder / marker).exists():
            return folder
    if (root / archive).exists():
        if checksum:
            verify_checksum(root / archive, checksum)
        safe_extract(root / archive, work)
        if (work / marker).exists():
            return work
        raise RayexpError(f"{root / archive} does not contain {marker}; is it the right archive?")
    where = f" (download it from {url})" if url else ""
    raise RayexpError(f"expected {archive} or its extracted {marker} in {root}{where}; point --source at the folder holding it")


def tree_digest(files: list[Path], base: Path) -> str:
    """sha256 over each file's relative path and content digest: a fingerprint of an extracted folder,
    recorded in the manifest where no published archive checksum applies."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return "sha256:" + digest.hexdigest()


def source_checksums(from_archive: bool, archive: str, checksum: str | None, files: list[Path], folder: Path, label: str) -> dict[str, str]:
    """What the manifest records about the source: the archive's published checksum when the archive was
    read, else a fingerprint of the extracted folder's ``files``."""
    if from_archive and checksum:
        return {archive: checksum}
    return {f"{label}/ ({len(files)} images)": tree_digest(files, folder)}


def locate_dataset_folder(root: Path, work: Path, archive: str, folder: str, marker: str, url: str | None = None, checksum: str | None = None) -> tuple[Path, bool]:
    """A source's extracted ``folder`` and whether it came from the (verified) archive.

    ``--source`` may be that folder itself (``marker``, a path inside it, exists in ``root``), a folder
    holding it, or a folder holding ``archive``, which is then verified and extracted into ``work``.
    """
    if (root / marker).exists():
        return root, False
    base = find_or_extract(root, work, archive, f"{folder}/{marker}", url, checksum)
    return base / folder, base == work

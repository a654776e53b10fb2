"""Getting source files: download with a verified checksum, and extract archives safely.

Shared by every source module. Downloads go to ``<data_dir>/.downloads/<dataset>/`` and are verified
against the checksum the source module declares; a mismatch deletes the file and stops. Archives are
extracted member by member by this module, never by tarfile's or zipfile's own extraction, through
descriptors that never follow a link; paths outside the target (absolute, ``..``), links and special
files are refused.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO

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
        raise RayexpError(
            f"{remote.filename} has no published checksum to verify a download against; download {remote.url} yourself "
            "and pass --source"
        )
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
                    print(
                        f"\rdownloading {remote.filename}: {done / 1e6:.1f} MB{share}",
                        end="",
                        file=sys.stderr,
                        flush=True,
                    )
        if not quiet and sys.stderr.isatty():
            print(file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise RayexpError(
            f"downloading {remote.url} failed ({getattr(exc, 'reason', exc)}); download it yourself and pass --source"
        ) from None
    try:
        verify_checksum(partial, remote.checksum)
    except RayexpError:
        partial.unlink(missing_ok=True)
        raise
    partial.rename(target)
    return target


_CHUNK = 1 << 20
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC
_DRIVE = re.compile(r"^[A-Za-z]:")


def _components(name: str) -> tuple[str, ...] | None:
    """A member name's path components under the target, or None for a name that cannot stay inside it
    (absolute, a drive letter, a ``..`` component, a NUL byte); backslashes count as separators for the check
    because archives made on Windows use them."""
    if "\0" in name or name.startswith(("/", "\\")) or _DRIVE.match(name) or ".." in re.split(r"[/\\]", name):
        return None
    return tuple(part for part in name.split("/") if part not in ("", "."))


class _Extractor:
    """Writes members under one resolved target folder, never through a symbolic link.

    Paths are not trusted to resolve the way they read (CVE-2025-4517 made ``os.path.realpath`` stop expanding
    links once a path passes PATH_MAX), so every directory is reached from an open descriptor of the target,
    one component at a time with O_NOFOLLOW, and files are created with O_CREAT | O_EXCL | O_NOFOLLOW.
    """

    def __init__(self, archive: Path, root: Path) -> None:
        self.archive = archive
        self.root = str(root)
        self.root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
        self.files: set[tuple[str, ...]] = set()  # regular members written so far: what a hard link may copy
        self.checked: set[tuple[str, ...]] = set()  # directories whose real path was seen inside the target

    def close(self) -> None:
        os.close(self.root_fd)

    def refuse(self, name: str, why: str) -> RayexpError:
        return RayexpError(f"archive {self.archive}: member {name!r} {why}; refusing the archive")

    def parts(self, name: str) -> tuple[str, ...]:
        parts = _components(name)
        if parts is None:
            raise self.refuse(name, "has a path outside the target (absolute, a drive letter or '..')")
        return parts

    def directory(self, parts: tuple[str, ...], name: str) -> int:
        """An open descriptor of ``target/<parts>``, creating the missing directories (0o755)."""
        fd = os.dup(self.root_fd)
        try:
            for depth, part in enumerate(parts, 1):
                try:
                    os.mkdir(part, 0o755, dir_fd=fd)
                except FileExistsError:
                    pass
                try:
                    child = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # ELOOP for a symbolic link, ENOTDIR for a file: neither is entered
                    where = "/".join(parts[:depth])
                    raise self.refuse(
                        name, f"would go through {where!r}, which the target holds as a link or a file, not a directory"
                    ) from None
                os.close(fd)
                fd = child
            if parts not in self.checked:
                real = os.path.realpath(os.path.join(self.root, *parts))
                if os.path.commonpath([real, self.root]) != self.root:
                    raise self.refuse(name, f"resolves to {real}, outside the target {self.root}")
                self.checked.add(parts)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def _create(self, parent: int, leaf: str, name: str) -> int:
        try:
            return os.open(leaf, _NEW_FILE_FLAGS, 0o644, dir_fd=parent)
        except FileExistsError:
            pass
        # An entry already there (an earlier member of that name, a planted link) is replaced, never written
        # through: unlinking removes only the name in the target, whatever it points to.
        if stat.S_ISDIR(os.stat(leaf, dir_fd=parent, follow_symlinks=False).st_mode):
            raise self.refuse(name, "is a file where the target already holds a directory")
        os.unlink(leaf, dir_fd=parent)
        return os.open(leaf, _NEW_FILE_FLAGS, 0o644, dir_fd=parent)

    def write(self, name: str, source: IO[bytes], mtime: float | None = None) -> None:
        parts = self.parts(name)
        if not parts:
            raise self.refuse(name, "is a file named like the target folder itself")
        parent = self.directory(parts[:-1], name)
        try:
            fd = self._create(parent, parts[-1], name)
        finally:
            os.close(parent)
        with os.fdopen(fd, "wb") as out:
            while block := source.read(_CHUNK):
                out.write(block)
            out.flush()
            if mtime is not None and os.utime in os.supports_fd:
                try:
                    os.utime(out.fileno(), (mtime, mtime))
                except (OverflowError, OSError, ValueError):
                    pass
        self.files.add(parts)

    def copy(self, name: str, linkname: str) -> None:
        """A hard link member, written as a copy of the earlier regular member it names."""
        source = _components(linkname)
        if source is None:
            raise self.refuse(name, f"is a hard link to {linkname!r}, outside the target")
        if source not in self.files:
            raise self.refuse(name, f"is a hard link to {linkname!r}, which is not an earlier file of the archive")
        parent = self.directory(source[:-1], name)
        try:
            fd = os.open(source[-1], os.O_RDONLY | os.O_NOFOLLOW | _CLOEXEC, dir_fd=parent)
        finally:
            os.close(parent)
        with os.fdopen(fd, "rb") as handle:
            self.write(name, handle)


_LINKS_REFUSED = "a link pointing outside the target could redirect later members, and dataset archives hold none"


def _extract_tar(archive: Path, extractor: _Extractor) -> None:
    with tarfile.open(archive) as tf:
        for member in tf:  # streamed: each file is read right after its header
            name = member.name
            parts = extractor.parts(name)
            if member.isdir():
                os.close(extractor.directory(parts, name))
            elif member.isreg():
                with tf.extractfile(member) as source:
                    extractor.write(name, source, member.mtime)
            elif member.islnk():
                extractor.copy(name, member.linkname)
            elif member.issym():
                raise extractor.refuse(name, f"is a symbolic link to {member.linkname!r} ({_LINKS_REFUSED})")
            else:
                kind = (
                    "a character device"
                    if member.ischr()
                    else "a block device"
                    if member.isblk()
                    else "a FIFO"
                    if member.isfifo()
                    else f"of tar type {member.type!r}"
                )
                raise extractor.refuse(name, f"is {kind}, not a file or a directory")


def _extract_zip(archive: Path, extractor: _Extractor) -> None:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            name = info.filename
            parts = extractor.parts(name)
            kind = stat.S_IFMT(info.external_attr >> 16)  # the Unix file type, when the zip records one
            if kind == stat.S_IFLNK:
                raise extractor.refuse(name, f"is a symbolic link ({_LINKS_REFUSED})")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise extractor.refuse(name, f"is a special file (mode {kind:o}), not a file or a directory")
            if info.is_dir():
                os.close(extractor.directory(parts, name))
            else:
                with zf.open(info) as source:
                    extractor.write(name, source)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Extract a .tar(.gz/.bz2/.xz), .tgz or .zip into ``target`` and return ``target``.

    Archives come from the internet, and tarfile's own "data" filter let CVE-2025-4517 write outside the
    target on the Pythons we support, so neither tarfile's nor zipfile's extraction is used: members are
    read one by one and written here, through descriptors that never follow a link (see ``_Extractor``).
    Symbolic links, devices and FIFOs are refused, as are paths that are absolute or hold ``..``; a hard link
    becomes a copy of the earlier member it names. Files get mode 0o644 and folders 0o755 (less the umask).
    A refused archive raises RayexpError naming the member; nothing is ever written outside ``target``,
    though what was extracted before the refusal stays in it.
    """
    archive, target = Path(archive), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        extract = _extract_zip
    elif tarfile.is_tarfile(archive):
        extract = _extract_tar
    else:
        raise RayexpError(f"{archive} is neither a tar nor a zip archive")
    extractor = _Extractor(archive, target.resolve())
    try:
        extract(archive, extractor)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise RayexpError(f"archive {archive} is damaged ({exc}); delete it and download it again") from None
    finally:
        extractor.close()
    return target


def find_or_extract(
    root: Path, work: Path, archive: str, marker: str, url: str | None = None, checksum: str | None = None
) -> Path:
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
    raise RayexpError(
        f"expected {archive} or its extracted {marker} in {root}{where}; point --source at the folder holding it"
    )


def tree_digest(files: list[Path], base: Path) -> str:
    """sha256 over each file's relative path and content digest: a fingerprint of an extracted folder,
    recorded in the manifest where no published archive checksum applies."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(f"{path.relative_to(base).as_posix()}\0{file_digest(path)}\n".encode())
    return "sha256:" + digest.hexdigest()


def source_checksums(
    from_archive: bool, archive: str, checksum: str | None, files: list[Path], folder: Path, label: str
) -> dict[str, str]:
    """What the manifest records about the source: the archive's published checksum when the archive was
    read, else a fingerprint of the extracted folder's ``files``."""
    if from_archive and checksum:
        return {archive: checksum}
    return {f"{label}/ ({len(files)} images)": tree_digest(files, folder)}


def locate_dataset_folder(
    root: Path, work: Path, archive: str, folder: str, marker: str, url: str | None = None, checksum: str | None = None
) -> tuple[Path, bool]:
    """A source's extracted ``folder`` and whether it came from the (verified) archive.

    ``--source`` may be that folder itself (``marker``, a path inside it, exists in ``root``), a folder
    holding it, or a folder holding ``archive``, which is then verified and extracted into ``work``.
    """
    if (root / marker).exists():
        return root, False
    base = find_or_extract(root, work, archive, f"{folder}/{marker}", url, checksum)
    return base / folder, base == work

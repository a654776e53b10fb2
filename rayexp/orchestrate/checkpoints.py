"""A trial's checkpoints in its run folder (:meth:`rayexp.settings.SweepSettings.train_run`): the one place
both runtimes keep them, so that a trial resumes from its last epoch whichever runtime trained it before.

Ray Train persists each reported checkpoint there itself (``checkpoint_<time>/checkpoint.pt``, the run being
named after the trial). The light runtime writes the same layout here (``checkpoint_epoch-<N>/``): Tune's own
checkpoints belong to a Tune trial, and a sweep resumed after its driver was killed is a new Tune run whose
trials start without them, while the run folder is found again by the trial's key. A local folder or a
bucket URI, through ``pyarrow.fs`` as Train does.
"""

from __future__ import annotations

import io
import os

import pyarrow
import pyarrow.fs
import torch

from rayexp.errors import RayexpError
from rayexp.safeload import CarriesCode, load_tensors
from rayexp.storage import write_whole

CHECKPOINT_FILE = "checkpoint.pt"
CHECKPOINT_PREFIX = "checkpoint_"


def run_folder(location: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of a trial's run folder (a local folder or a bucket URI)."""
    if "://" in location:
        return pyarrow.fs.FileSystem.from_uri(location)
    return pyarrow.fs.LocalFileSystem(), os.path.abspath(location)


def checkpoint_dirs(filesystem: pyarrow.fs.FileSystem, path: str) -> list[pyarrow.fs.FileInfo]:
    """The checkpoint folders of the run folder at ``path``, either runtime's."""
    infos = filesystem.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))
    return [i for i in infos if i.type == pyarrow.fs.FileType.Directory and i.base_name.startswith(CHECKPOINT_PREFIX)]


def save_checkpoint(location: str, epoch: int, state: dict) -> None:
    """Write ``state`` as the run's checkpoint of ``epoch``, then remove its older ones (one is kept, as Train's
    ``num_to_keep=1``). The file is complete under its final name before anything older goes: a node lost
    while writing leaves the previous checkpoint to resume from."""
    filesystem, path = run_folder(location)
    name = f"{CHECKPOINT_PREFIX}epoch-{epoch:04d}"
    buffer = io.BytesIO()
    torch.save(state, buffer)
    filesystem.create_dir(f"{path}/{name}", recursive=True)
    # Under another name until complete (the loader only reads checkpoint.pt), and no partial file left behind
    # when the storage is full: it would hold the disk full.
    write_whole(filesystem, f"{path}/{name}/{CHECKPOINT_FILE}", buffer.getvalue())
    for info in checkpoint_dirs(filesystem, path):
        if info.base_name != name:
            filesystem.delete_dir(info.path)


def load_latest_checkpoint(location: str, device: torch.device) -> dict | None:
    """The run's most recent readable checkpoint (either runtime's), or None when it has none.

    A file that cannot be read is passed over for the next newest: Train writes its checkpoint under its final
    name, so a worker killed while Train persisted it leaves a cut-short file that Train itself never
    registered (its previous checkpoint is still there, and is the one Train would resume from too).
    """
    filesystem, path = run_folder(location)
    files = filesystem.get_file_info([f"{d.path}/{CHECKPOINT_FILE}" for d in checkpoint_dirs(filesystem, path)])
    found = sorted((f for f in files if f.type == pyarrow.fs.FileType.File), key=lambda f: f.mtime_ns or 0)
    for newest in reversed(found):
        with filesystem.open_input_stream(newest.path) as stream:
            data = stream.read()
        try:
            return read_checkpoint_bytes(data, newest.path, device)
        except CarriesCode as exc:
            if not older_format(exc):
                raise
            print(
                f"[rayexp] passing over the checkpoint {newest.path}: an older rayexp wrote it with NumPy arrays, "
                "which are not loaded any more (tensors and plain data only); the trial starts from its first epoch",
                flush=True,
            )
            return None
        except Exception as exc:  # noqa: BLE001 - a cut-short file fails anywhere in the unpickler
            print(f"[rayexp] passing over the unreadable checkpoint {newest.path}: {exc}".splitlines()[0], flush=True)
    return None


def older_format(exc: CarriesCode) -> bool:
    """A checkpoint an older rayexp wrote: it names NumPy's array reconstruction (its RNG state), nothing else
    (never loaded either way: only the verdict differs, passed over rather than refused)."""
    return exc.callable_name.startswith("numpy.")


def read_checkpoint_bytes(data: bytes, where: str, device: torch.device) -> dict:
    """A trial checkpoint's dict from its bytes, tensors and plain data only: one that would run code is refused
    (:class:`rayexp.safeload.CarriesCode`, naming ``where``), never loaded, whoever could write the storage."""
    found = load_tensors(io.BytesIO(data), f"the checkpoint {where}", device)
    if not isinstance(found, dict):
        raise RayexpError(f"the checkpoint {where} holds a {type(found).__name__}, not a trial checkpoint")
    return found

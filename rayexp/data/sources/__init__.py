"""Source modules: one per on-disk source format, each small.

Every module here defines

* ``DATASETS``: the catalog names it reads (``rayexp/data/catalog.py``, field ``source``);
* ``remote_files(name) -> list[RemoteFile]``: what ``prepare --download`` fetches, with checksums;
  empty for sources that must be downloaded by hand;
* ``local_help(name) -> str``: what to download, from where, and how to point ``--source`` at it;
* ``load_source(name, root, work, split) -> Source``: locate the files under ``root`` (the user's
  ``--source`` folder, a folder holding a link to the user's archive, or the download folder), extract
  archives into the scratch folder ``work`` with :func:`rayexp.data.download.find_or_extract`, verify
  them, and return the class names and records. ``split`` is ``"default"`` (rayexp's rule) or
  ``"paper"`` (the paper's counts where they differ).

A source module only says what the images and labels are, as a :class:`rayexp.data.records.Source`;
splitting, ranking, encoding, resizing, statistics and writing live once in :mod:`rayexp.data.writer`
(with :mod:`rayexp.data.records` and :mod:`rayexp.data.codec`), verifying in :mod:`rayexp.data.shards`.
"""

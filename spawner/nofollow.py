"""Opening a folder without following any symlink: the one rule every mount is made by.

Standard library only, because it runs in two places: on the hub (:mod:`spawner.mounts`,
for the local backend's binds and every backend's checks) and on a Slurm compute node,
shipped inside the job (:mod:`spawner.slurm_job`), which opens every folder again there.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath


def open_folder(path: str | os.PathLike[str]) -> int:
    """An ``O_PATH`` descriptor of the folder ``path`` names, reached without any symlink.

    Each component is opened with ``O_NOFOLLOW`` relative to its parent, so what is opened
    is what the path names now, not what a symlink points to; a symlink or a non-folder
    anywhere raises :class:`OSError`. A backend that mounts from the descriptor (bubblewrap's
    ``--bind-fd``) mounts exactly this folder, whatever is renamed afterwards.
    """
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY)
    try:
        for part in PurePosixPath(os.fspath(path)).parts[1:]:
            child = os.open(part, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd

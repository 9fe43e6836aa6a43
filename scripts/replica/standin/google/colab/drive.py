"""Colab's Drive mount (google/colab/drive.py), with a local folder as MyDrive.

`mount(mountpoint)` makes `mountpoint/MyDrive` the folder named by LLMOPS_REPLICA_DRIVE (one
for the whole replica run: Drive outlives a runtime, as on Colab). A mountpoint under
/content is taken inside the runtime's content folder, LLMOPS_COLAB_CONTENT, which plays
Colab's /content. Colab's own checks on the mountpoint are kept.
"""

import os

__all__ = ["flush_and_unmount", "mount"]

DRIVE_ENV = "LLMOPS_REPLICA_DRIVE"
CONTENT_ENV = "LLMOPS_COLAB_CONTENT"


def _local(mountpoint: str) -> str:
    """Where `mountpoint` is in this runtime: /content/... lies in LLMOPS_COLAB_CONTENT."""
    path = os.path.normpath(os.path.expanduser(mountpoint))
    content = os.environ.get(CONTENT_ENV)
    if content and (path == "/content" or path.startswith("/content/")):
        return os.path.normpath(os.path.join(content, os.path.relpath(path, "/content")))
    return path


_MOUNTED: list[str] = []  # the MyDrive links this process made


def mount(mountpoint, force_remount=False, timeout_ms=120000, readonly=False):
    """Mount "Google Drive" at `mountpoint`: its MyDrive is the replica's Drive folder."""
    if " " in mountpoint:
        raise ValueError("Mountpoint must not contain a space.")
    path = _local(mountpoint)
    my_drive = os.path.join(path, "MyDrive")
    if os.path.isdir(my_drive):
        if not force_remount:
            print(
                f"Drive already mounted at {mountpoint}; to attempt to forcibly "
                f'remount, call drive.mount("{mountpoint}", force_remount=True).'
            )
            return
        os.remove(my_drive)  # Colab unmounts first, then checks the mountpoint
    if os.path.islink(path):
        raise ValueError("Mountpoint must not be a symlink")
    if os.path.isdir(path) and os.listdir(path):
        raise ValueError("Mountpoint must not already contain files")
    if not os.path.isdir(path) and os.path.exists(path):
        raise ValueError("Mountpoint must either be a directory or not exist")
    if not os.path.exists(os.path.dirname(path)):
        raise ValueError("Mountpoint must be in a directory that exists")
    backing = os.environ[DRIVE_ENV]
    os.makedirs(backing, exist_ok=True)
    os.makedirs(path, exist_ok=True)
    os.symlink(backing, my_drive)
    _MOUNTED.append(my_drive)
    print(f"Mounted at {mountpoint}")


def flush_and_unmount(timeout_ms=24 * 60 * 60 * 1000):
    """Unmount: MyDrive leaves the mountpoint; its files stay in Drive."""
    if not _MOUNTED:
        print("Drive not mounted, so nothing to flush and unmount.")
    while _MOUNTED:
        os.remove(_MOUNTED.pop())

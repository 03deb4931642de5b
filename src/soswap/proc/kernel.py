"""Running kernel versus the newest kernel image installed in /boot.

The statuses are needrestart's (``NEEDRESTART-KSTA``): 0 unknown, 1 current, 2 ABI rebuild (same release, another
build string, i.e. ``uname -v`` differs), 3 a newer release is installed. An x86 bzImage carries its full version
string ("<release> (<builder>) <uname -v>") at 0x200 plus the 16-bit offset stored at 0x20e (the boot protocol's
``kernel_version`` field, present when the "HdrS" magic is at 0x202); other images are known by their file name
(``vmlinuz-<release>``). The check is skipped inside a container (it shares the host's kernel).
"""

from __future__ import annotations

import os
import re
import struct
from typing import List, Optional, Tuple

from soswap.textfile import read_regular
from soswap.tuples import NamedTuple

UNKNOWN = 0
CURRENT = 1
ABI_UPGRADE = 2
VERSION_UPGRADE = 3

STATUS_NAMES = {UNKNOWN: "unknown", CURRENT: "current", ABI_UPGRADE: "ABI upgrade", VERSION_UPGRADE: "version upgrade"}

_IMAGE_RE = re.compile(r"^(vmlinuz|vmlinux|kernel|Image|bzImage|zImage)[-_](?P<rel>\d+\.\d+.*?)(\.img)?$")
_MIN_IMAGE_SIZE = 1_000_000


class KernelImage(NamedTuple):
    path: str
    release: str
    build: Optional[str]  #: the "uname -v" part, when the image header says it


class KernelStatus(NamedTuple):
    status: int
    running: str  #: uname -r
    running_build: str  #: uname -v
    expected: Optional[str]  #: newest installed release
    images: Tuple[KernelImage, ...]
    reason: str  #: why unknown, or a human explanation

    @property
    def name(self) -> str:
        return STATUS_NAMES[self.status]

    @property
    def needs_reboot(self) -> bool:
        return self.status in (ABI_UPGRADE, VERSION_UPGRADE)


def version_key(release: str) -> Tuple:
    """A natural sort key: "6.1.0-18-amd64" < "6.1.0-20-amd64" < "6.10.0-1"."""
    key = []
    for part in re.findall(r"\d+|[^\d]+", release):
        key.append((0, int(part), "") if part.isdigit() else (1, 0, part))
    return tuple(key)


def read_bzimage_version(path: str) -> Optional[str]:
    """The version string of an x86 bzImage (boot protocol header), or None."""
    try:
        # the setup header and the version string it points to lie in the first 0x200 + 64 KiB + 256 bytes
        data = read_regular(path, 0x200 + 0x10000 + 256)  # a FIFO never blocks
    except OSError:
        return None
    if len(data) < 0x210 or data[0x202:0x206] != b"HdrS":
        return None
    (offset,) = struct.unpack_from("<H", data, 0x20E)
    raw = data[0x200 + offset:0x200 + offset + 256]
    text = raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()
    if not re.match(r"^\d+\.\d+", text):
        return None
    return text


def _split_version_string(text: str) -> Tuple[str, Optional[str]]:
    """"6.1.0-18-amd64 (debian-kernel@lists.debian.org) #1 SMP ..." -> ("6.1.0-18-amd64", "#1 SMP ...")."""
    release, _, rest = text.partition(" ")
    build = None
    if rest.startswith("("):
        # The builder "(user@host) (gcc ...)" groups, then the uname -v string starting with '#'.
        hash_at = rest.find("#")
        if hash_at >= 0:
            build = rest[hash_at:].strip()
    return release, build


def installed_images(boot_dir: str = "/boot") -> List[KernelImage]:
    images = []
    try:
        names = os.listdir(boot_dir)
    except OSError:
        return []
    for name in sorted(names):
        m = _IMAGE_RE.match(name)
        if not m or name.startswith("init"):
            continue
        path = os.path.join(boot_dir, name)
        try:
            st = os.stat(path)
        except OSError:
            continue
        if st.st_size < _MIN_IMAGE_SIZE:
            continue
        text = read_bzimage_version(path)
        if text is not None:
            release, build = _split_version_string(text)
        else:
            release, build = m.group("rel"), None
        images.append(KernelImage(path, release, build))
    return images


#: The inode of the initial PID namespace (PROC_PID_INIT_INO, include/linux/proc_ns.h).
PROC_PID_INIT_INO = 0xEFFFFFFC


def in_container() -> bool:
    """True inside a container: a PID namespace other than the initial one, or systemd's/podman's marker file.

    ``/.dockerenv`` alone is not trusted: images built with docker keep it when booted as VMs."""
    for marker in ("/run/systemd/container", "/run/.containerenv"):
        if os.path.exists(marker):
            return True
    try:
        return os.stat("/proc/self/ns/pid").st_ino != PROC_PID_INIT_INO
    except OSError:
        return False


def check(
    boot_dir: str = "/boot",
    release: Optional[str] = None,
    build: Optional[str] = None,
    skip_in_container: bool = True,
) -> KernelStatus:
    """Compare the running kernel (``uname -r``/``-v``, or the given values) with the images in ``boot_dir``."""
    uts = os.uname()
    release = release if release is not None else uts.release
    build = build if build is not None else uts.version
    if skip_in_container and in_container():
        return KernelStatus(UNKNOWN, release, build, None, (), "inside a container: the host's kernel")
    images = tuple(installed_images(boot_dir))
    if not images:
        return KernelStatus(UNKNOWN, release, build, None, images, f"no kernel image found in {boot_dir}")
    newest = max(images, key=lambda im: version_key(im.release))
    if version_key(newest.release) > version_key(release):
        return KernelStatus(VERSION_UPGRADE, release, build, newest.release, images,
                            f"running {release}, newest installed {newest.release}: reboot needed")
    same = [im for im in images if im.release == release]
    if not same:
        # The running release is newer than every image (or was removed): nothing newer to boot.
        return KernelStatus(CURRENT, release, build, newest.release, images,
                            f"running {release}; no newer image in {boot_dir}")
    builds = [im.build for im in same if im.build is not None]
    if builds and build not in builds:
        return KernelStatus(ABI_UPGRADE, release, build, release, images,
                            f"running {release} built '{build}', installed image built '{builds[0]}': reboot needed")
    return KernelStatus(CURRENT, release, build, release, images, f"running {release}, the newest installed")

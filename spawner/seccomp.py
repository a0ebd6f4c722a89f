"""The seccomp filter of a local sandbox: no new namespaces, and none of the kernel's riskiest
interfaces.

A sandboxed user has no capabilities, but Linux lets any process make a user namespace and
become "root" inside it, which opens the kernel's mount, netfilter and other code that is a
frequent source of privilege escalations. Docker's and Flatpak's default filters close the
same doors; this one does it for the local backend, as a classic BPF program that bubblewrap
loads (``--seccomp FD``) just before it runs the sandbox's first process.

Refused with ``EPERM``: ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag, the
new mount API, the kernel keyring, ``bpf``, ``perf_event_open``, ``userfaultfd``, io_uring,
and the ``TIOCSTI``/``TIOCLINUX`` ioctls (typing into a terminal). ``clone3`` gets
``ENOSYS``, since its flags cannot be read from a filter: the C library then falls back to
``clone``. Any other architecture's calls (32-bit ``int 0x80``, x32) kill the process: they
would go around the numbers checked here.
"""

from __future__ import annotations

import errno
import platform
import struct

# <linux/filter.h>, <linux/seccomp.h>, <linux/audit.h>
_LD_W_ABS, _JEQ, _JSET, _JGE, _RET = 0x20, 0x15, 0x45, 0x35, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
# x86_64 system call numbers (<asm/unistd_64.h>)
_IOCTL, _CLONE, _CLONE3 = 16, 56, 435
_REFUSED = {
    "mount": 165,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "setns": 308,
    "bpf": 321,
    "userfaultfd": 323,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
}
#: CLONE_NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET | NEWTIME
_CLONE_NEW = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000
_CLONE_NEW |= 0x40000000 | 0x00000080
_TIOCSTI, _TIOCLINUX = 0x5412, 0x541C
# offsets in struct seccomp_data: nr, arch, then args[6] of 8 bytes each (low half first)
_NR, _ARCH, _ARG0, _ARG1 = 0, 4, 16, 24


class SeccompUnsupported(Exception):
    """This machine's architecture has no filter here; the message says which."""


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def sandbox_filter() -> bytes:
    """The filter, as the bytes of a ``struct sock_filter`` array (x86_64 only)."""
    if platform.machine() != "x86_64":
        raise SeccompUnsupported(f"no seccomp filter for {platform.machine()} yet")
    eperm = _op(_RET, _ERRNO | errno.EPERM)
    refused = sorted(_REFUSED.values())
    # Layout: arch check, x32 check, one jump per refused number to the shared EPERM at the
    # end, then clone3, clone and ioctl with their argument checks.
    body = [
        _op(_LD_W_ABS, _ARCH),
        _op(_JEQ, _AUDIT_ARCH_X86_64, jt=1),
        _op(_RET, _KILL_PROCESS),
        _op(_LD_W_ABS, _NR),
        _op(_JGE, _X32_BIT, jf=1),
        _op(_RET, _KILL_PROCESS),
    ]
    tail = [
        _op(_JEQ, _CLONE3, jf=1),
        _op(_RET, _ERRNO | errno.ENOSYS),
        _op(_JEQ, _CLONE, jf=3),
        _op(_LD_W_ABS, _ARG0),
        _op(_JSET, _CLONE_NEW, jt=7),  # -> EPERM
        _op(_RET, _ALLOW),
        _op(_JEQ, _IOCTL, jf=4),
        _op(_LD_W_ABS, _ARG1),
        _op(_JEQ, _TIOCSTI, jt=3),  # -> EPERM
        _op(_JEQ, _TIOCLINUX, jt=2),  # -> EPERM
        _op(_RET, _ALLOW),
        _op(_RET, _ALLOW),
        eperm,
    ]
    checks = []
    for i, number in enumerate(refused):
        to_eperm = (len(refused) - i - 1) + len(tail) - 1  # the instructions left before EPERM
        checks.append(_op(_JEQ, number, jt=to_eperm))
    return b"".join([*body, *checks, *tail])

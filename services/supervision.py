"""Process supervision: every process vna starts dies with the process that started it,
a service starts only on a port nobody else serves, and all of them log alike.

`vna up` starts `vna scp`, `vna api` and `vna worker`; `vna scp` starts its SCP processes;
a Celery worker forks its pool. If a parent is killed (kill -9, OOM killer), its children
must not live on: they would keep the ports, and since the SCP binds with SO_REUSEPORT a
restarted archive would bind next to them, so that two archives answer on one port. So
each child asks the kernel for a signal when its parent dies (`PR_SET_PDEATHSIG`) and
checks, once that is set, that its parent is still the one that started it (it may have
died in between). And each service waits, before it binds, until no one listens on its
port: what a dead parent's children still do on their way out, not a second archive.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable

log = logging.getLogger("vna")

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Libraries that narrate what vna reports itself: urllib3 logs each retry of a request to
# an S3 server that is down (vna logs the failure, once per FailureLog period).
_QUIET = {"alembic.runtime.plugins": logging.WARNING, "urllib3.connectionpool": logging.ERROR}


def configure_logging(level: str) -> None:
    """The log format and levels of every vna process (spawned SCP processes too)."""
    logging.basicConfig(level=level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, quiet in _QUIET.items():
        logging.getLogger(name).setLevel(quiet)


def die_with_parent(parent_pid: int, sig: int = signal.SIGTERM) -> None:
    """Have `sig` sent to this process when its parent dies; if the parent that started us
    (`parent_pid`) is gone already, send it now. Linux only; elsewhere nothing happens."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
        return
    if os.getppid() != parent_pid:  # it died before the kernel knew to tell us
        os.kill(os.getpid(), sig)


def child_of_this_process(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn` for subprocess.Popen: the child dies with this process."""
    parent = os.getpid()

    def _preexec() -> None:
        die_with_parent(parent, sig)

    return _preexec


def port_is_free(host: str, port: int) -> bool:
    """Whether nobody listens on host:port (SO_REUSEADDR, as servers bind, so a port with
    connections in TIME_WAIT counts as free)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def wait_for_free_port(host: str, port: int, what: str, timeout: float = 30.0) -> bool:
    """Wait up to `timeout` seconds for nobody to listen on host:port; False if someone
    still does (then the caller must not start: it would answer next to them)."""
    deadline = time.monotonic() + timeout
    told = False
    while not port_is_free(host, port):
        if time.monotonic() > deadline:
            return False
        if not told:
            log.warning("%s port %s:%d is in use; waiting up to %.0f s for it to be free",
                        what, host, port, timeout)
            told = True
        with contextlib.suppress(InterruptedError):
            time.sleep(0.2)
    return True

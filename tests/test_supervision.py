"""Every process vna starts dies with its parent, however the parent dies; a restart right
after needs no cleanup; a second archive never answers on a port next to the first."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests import dicom_client as dc
from tests.conftest import VNA, Backend, free_port, vna_env, wait_port
from tests.factory import make_instance, write


def _children() -> dict[int, list[int]]:
    """ppid -> pids of the live (not zombie) processes."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z":
            tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def descendants(pid: int) -> set[int]:
    tree, found, todo = _children(), set(), [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pids: set[int]) -> set[int]:
    out = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.add(pid)
    return out


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return alive(pids)


def _settled_tree(pid: int, at_least: int, timeout: float = 60) -> set[int]:
    """The process tree under `pid` once it has `at_least` members and stopped growing."""
    deadline = time.monotonic() + timeout
    last: set[int] = set()
    while time.monotonic() < deadline:
        now = descendants(pid)
        if len(now) >= at_least and now == last:
            return now
        last = now
        time.sleep(1.0)
    raise AssertionError(f"process tree of {pid} did not settle: {sorted(last)}")


def _up(embedded: Backend, tmp_path: Path, dport: int, hport: int,
        name: str) -> tuple[subprocess.Popen[bytes], Path]:
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(dport), "VNA_HTTP_PORT": str(hport),
                   "VNA_DICOM_HOST": "127.0.0.1", "VNA_DICOM_PROCESSES": "2"})
    log = tmp_path / f"{name}.log"
    proc = subprocess.Popen([*VNA, "up"], env=env, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    wait_port(dport, 90)
    wait_port(hport, 90)
    return proc, log


def test_kill_9_of_vna_up_takes_all_of_it_and_a_restart_needs_no_cleanup(
        embedded: Backend, tmp_path: Path) -> None:
    embedded.data_dir.mkdir(parents=True)
    dport, hport = free_port(), free_port()
    proc, log = _up(embedded, tmp_path, dport, hport, "first")
    # scp supervisor + 2 SCP processes, api, worker + its pool process and beat
    tree = _settled_tree(proc.pid, at_least=6)
    files = [write(make_instance(), tmp_path / f"{i}.dcm") for i in range(3)]
    assert dc.store(dport, files) == [0, 0, 0]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_gone(tree, 30) == set(), f"outlived vna up: {sorted(alive(tree))}"
    for port in (dport, hport):
        with pytest.raises(TimeoutError):
            wait_port(port, 0.5)

    # right away, on the same data dir and ports
    again, log2 = _up(embedded, tmp_path, dport, hport, "second")
    try:
        deadline = time.monotonic() + 30
        while "Ctrl-C" not in log2.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log2.read_text()
        assert "not answering" not in text and "exited" not in text, text
        more = [write(make_instance(), tmp_path / f"more-{i}.dcm") for i in range(3)]
        assert dc.store(dport, files + more) == [0] * 6  # the first three: duplicates
        incoming = embedded.data_dir / "incoming"
        live = {p.name.rpartition("-")[2] for p in incoming.iterdir()}
        assert {str(pid) for pid in tree} & live == set()  # the dead ones' folders are gone
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(60) == 0, log2.read_text()


def test_kill_9_of_vna_scp_takes_its_processes(embedded: Backend) -> None:
    port = free_port()
    env = vna_env({**embedded.env, "VNA_DICOM_PORT": str(port), "VNA_DICOM_HOST": "127.0.0.1",
                   "VNA_DICOM_PROCESSES": "3"})
    proc = subprocess.Popen([*VNA, "scp"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    wait_port(port, 60)
    tree = _settled_tree(proc.pid, at_least=3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert wait_gone(tree, 30) == set()
    with pytest.raises(TimeoutError):
        wait_port(port, 0.5)


def test_a_second_archive_does_not_answer_on_a_port_in_use(embedded: Backend,
                                                            tmp_path: Path) -> None:
    """SO_REUSEPORT would let it bind next to the first: it waits, then gives up."""
    port = free_port()
    env = {**embedded.env, "VNA_DICOM_PORT": str(port), "VNA_DICOM_HOST": "127.0.0.1",
           "VNA_DICOM_PROCESSES": "1"}
    first = subprocess.Popen([*VNA, "scp"], env=vna_env(env), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port(port, 60)
        other = {**env, "VNA_DATA_DIR": str(tmp_path / "other-archive"),
                 "VNA_PORT_WAIT_SECONDS": "2"}
        second = subprocess.run([*VNA, "scp"], env=vna_env(other), capture_output=True,
                                text=True, timeout=60)
        assert second.returncode != 0
        assert "in use" in second.stdout + second.stderr
        assert dc.echo(port).is_established  # the first one still serves
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(30)

"""Training processes that die with the study that started them.

A run's command is started under a *watchdog*, ``python supervise.py
STUDY_PID -- COMMAND...`` (this file), the leader of a new process group.
The watchdog polls its parent: when the study is gone
(killed, even with SIGKILL, which no handler sees) or when it gets SIGTERM,
it stops every process it started, including those that left its group
(``torch.distributed.run`` starts each worker in a session of its own), by
SIGTERM, then SIGKILL after a grace period. A prctl death signal alone
reaches only the direct child: a distributed launch's workers would live
on under PID 1.
"""

import itertools
import os
import signal
import subprocess
import sys
import time
from typing import Dict, Iterable, List, Set

#: Seconds between the watchdog's looks at its parent.
POLL_S = 0.5
#: Polls between its looks at the processes below it (a /proc scan).
TREE_EVERY = 4
#: Seconds the processes get between SIGTERM and SIGKILL.
GRACE_S = 20.0


def _proc_stat(pid: int):
    """(ppid, pgrp) of ``pid`` from /proc, None if it is gone (or a
    zombie, which holds nothing any more)."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            text = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its ')'.
    fields = text[text.rindex(')') + 2 :].split()
    if fields[0] in ('Z', 'X'):
        return None
    return int(fields[1]), int(fields[2])


def _all_pids() -> List[int]:
    return [int(p) for p in os.listdir('/proc') if p.isdigit()]


def descendants(root: int) -> Set[int]:
    """The live processes below ``root`` (children, their children...)."""
    children: Dict[int, List[int]] = {}
    for pid in _all_pids():
        stat = _proc_stat(pid)
        if stat is not None:
            children.setdefault(stat[0], []).append(pid)
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def cmdline(pid: int) -> str:
    """The command line of ``pid`` ('' if it is gone)."""
    try:
        with open(f'/proc/{pid}/cmdline', 'rb') as f:
            return f.read().replace(b'\0', b' ').decode('utf-8', 'replace')
    except OSError:
        return ''


def live_processes(pgid: int, marker: str) -> List[int]:
    """Live processes of process group ``pgid`` whose command line holds
    ``marker`` (a run directory): a run still training."""
    return sorted(
        pid
        for pid in _all_pids()
        if (_proc_stat(pid) or (0, None))[1] == pgid and marker in cmdline(pid)
    )


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def stop_tree(
    root: int, also: Iterable[int] = (), grace_s: float = GRACE_S
) -> None:
    """SIGTERM every process below ``root`` and in ``also``, SIGKILL what
    is left after ``grace_s`` (processes that appear meanwhile are caught
    too)."""
    seen = descendants(root) | set(also)
    _signal_all(seen, signal.SIGTERM)
    deadline = time.time() + grace_s
    while time.time() < deadline:
        seen |= descendants(root)
        if not [p for p in seen if _proc_stat(p) is not None]:
            return
        time.sleep(POLL_S)
    seen |= descendants(root)
    _signal_all([p for p in seen if _proc_stat(p) is not None], signal.SIGKILL)


def watch(parent: int, command: List[str]) -> int:
    """Run ``command`` until it ends, or until ``parent`` dies or SIGTERM
    arrives, then stop it and all it started. Returns its exit status."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    child = subprocess.Popen(command)
    me = os.getpid()
    tree: Set[int] = set()
    for tick in itertools.count():
        if tick % TREE_EVERY == 0:
            # Remember the tree while it is whole: once a launcher dies,
            # its workers are re-parented and no longer below us.
            tree = {p for p in tree if _proc_stat(p) is not None}
            tree |= descendants(me)
        try:
            returncode = child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            returncode = None
        if stopping or os.getppid() != parent:
            stop_tree(me, tree)
            child.wait()
            return 128 + signal.SIGTERM if returncode is None else returncode
        if returncode is not None:
            return returncode


def watched(command: List[str]) -> List[str]:
    """``command`` under a watchdog whose parent is this process.

    The watchdog runs this file as a script: it needs the standard library
    only, not the package (whose import loads torch and the registries).
    """
    return [
        sys.executable,
        os.path.abspath(__file__),
        str(os.getpid()),
        '--',
        *command,
    ]


def stop_group(proc: subprocess.Popen, grace_s: float = GRACE_S) -> None:
    """Stop a watched run: SIGTERM its process group (the watchdog then
    stops what left the group), SIGKILL the group after ``grace_s`` more
    than the watchdog's own grace."""
    for sig, wait in (
        (signal.SIGTERM, GRACE_S + grace_s),
        (signal.SIGKILL, None),
    ):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main(argv: List[str]) -> int:
    if len(argv) < 3 or argv[1] != '--':
        print(
            'usage: python supervise.py PARENT_PID -- COMMAND...',
            file=sys.stderr,
        )
        return 2
    return watch(int(argv[0]), argv[2:])


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))

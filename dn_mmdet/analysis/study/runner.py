"""Running a study's grid, resumably, one training process at a time.

A run that finished, collapsed or diverged is never redone; a run that was
interrupted (the study killed) continues from its last checkpoint with
``tools/train.py --resume``; a run that failed (any other error) is retried
by the next invocation. Killing the study, even with SIGKILL, stops its
training processes (:mod:`.supervise`); a later invocation refuses to start
a run whose earlier training still lives.
"""

import datetime
import fcntl
import json
import os
import os.path as osp
import re
import resource
import shutil
import signal
import subprocess
import time
from dataclasses import asdict
from typing import List, Optional

from .options import (
    BaseConfig,
    format_option,
    run_lr,
    run_max_epochs,
    run_options,
    train_command,
)
from .records import (
    FINAL,
    LOG_FILE,
    atomic_write_text,
    close_open_segment,
    has_checkpoint,
    keep_checkpoints,
    read_state,
    run_outcome,
    run_record,
    runs_lost,
    study_summary,
    wall_time,
    write_csv,
    write_state,
)
from .report import write_report
from .spec import PROJECT_ROOT, Run, Study, format_mult
from .supervise import live_processes, stop_group, watched

LOCK_FILE = '.norm_study.lock'
_TRAIN_PROGRESS = re.compile(r'Epoch\(train\)\s*\[(\d+)\]\[\s*(\d+)/(\d+)\]')


class StudyError(RuntimeError):
    """The study cannot go on as asked (the message says what to do)."""


class Terminated(Exception):
    """The study got SIGTERM."""


def _on_sigterm(signum, frame):
    raise Terminated()


def _children_cpu() -> float:
    """CPU seconds (user + system) of the waited-for child processes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _count(items, noun: str) -> str:
    return f'{len(items)} {noun}{"" if len(items) == 1 else "s"}'


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return '?'
    return str(datetime.timedelta(seconds=int(round(seconds))))


def progress_in_log(log_path: str) -> Optional[tuple]:
    """(epoch, iteration, iterations an epoch) of the log's last train line."""
    if not osp.isfile(log_path):
        return None
    with open(log_path, 'rb') as f:
        f.seek(max(0, osp.getsize(log_path) - 16384))
        matches = _TRAIN_PROGRESS.findall(f.read().decode('utf-8', 'replace'))
    return tuple(int(x) for x in matches[-1]) if matches else None


class StudyRunner:
    """Runs the grid of a :class:`Study` into ``out_dir``, resumably.

    Args:
        study (Study): The study.
        out_dir (str): The study's directory (``runs/`` and the results).
        env (dict, optional): Environment of the training processes
            (default: this process's); the spec's ``threads`` is set in it.
        progress_interval (float): Seconds between progress lines while a
            run trains.
        echo (callable): Where progress lines go.
    """

    def __init__(
        self,
        study: Study,
        out_dir: str,
        env: Optional[dict] = None,
        progress_interval: float = 60.0,
        echo=print,
    ):
        self.study = study
        self.out_dir = osp.abspath(out_dir)
        self.env = dict(os.environ if env is None else env)
        self.env['PYTHONPATH'] = os.pathsep.join(
            [PROJECT_ROOT] + [p for p in [self.env.get('PYTHONPATH')] if p]
        )
        if study.threads is not None:
            for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
                self.env[key] = str(study.threads)
        self.progress_interval = progress_interval
        self.echo = lambda msg: echo(f'[norm_study] {msg}', flush=True)
        self.base = BaseConfig(study)

    def run_dir(self, run: Run) -> str:
        return osp.join(self.out_dir, 'runs', run.name)

    def records(self) -> List[dict]:
        return [
            run_record(
                self.study,
                self.base,
                run,
                self.run_dir(run),
                read_state(self.run_dir(run)),
            )
            for run in self.study.runs()
        ]

    def check_nothing_lost(self, records: List[dict]) -> None:
        """Raise if writing ``records`` over the results.json on disk would
        drop a run that has an outcome there (e.g. results committed
        without their ``runs/`` folder, or a grid narrowed by ``--norms``).

        Raises:
            StudyError: naming the file and the runs.
        """
        path = osp.join(self.out_dir, 'results.json')
        if not osp.isfile(path):
            return
        with open(path) as f:
            old = json.load(f).get('runs', [])
        lost = runs_lost(old, records)
        if lost:
            missing = osp.join(self.out_dir, 'runs')
            raise StudyError(
                f'{path} holds {len(lost)} run(s) with an outcome that this '
                f'study would write back as pending or drop (e.g. '
                f'{lost[0]}): their folders are not in {missing} or they '
                'are not in this grid. Nothing was written. Use another '
                '--work-dir, or redraw the tables and plots from '
                'results.json with tools/analysis/norm_study_report.py.'
            )

    def check_finished_runs_match(self) -> None:
        """Raise if a finished run trained with other ``--cfg-options``
        than the spec now gives it (say, more epochs at a batch size): the
        study would keep its old result beside new ones as one cell.

        Raises:
            StudyError: naming the run, both option lists and what to do.
        """
        stale = []
        for run in self.study.runs():
            state = read_state(self.run_dir(run))
            recorded = state.get('command')
            if state.get('result', {}).get('status') not in FINAL or (
                not recorded or '--cfg-options' not in recorded
            ):
                continue
            then = recorded[recorded.index('--cfg-options') + 1 :]
            then = [o for o in then if o != '--resume']
            now = [
                format_option(k, v)
                for k, v in run_options(self.study, self.base, run).items()
            ]
            if set(then) != set(now):
                stale.append(
                    (run.name, set(then) - set(now), set(now) - set(then))
                )
        if stale:
            name, gone, added = stale[0]
            raise StudyError(
                f'{len(stale)} finished run(s) trained with options the spec '
                f'no longer gives them, e.g. {name}: it trained with '
                f'{" ".join(sorted(gone)) or "-"} where the spec now gives '
                f'{" ".join(sorted(added)) or "-"}. Delete their folders '
                f'under {osp.join(self.out_dir, "runs")} to train them again, '
                'or restore the spec.'
            )

    def write_results(self, plots: bool = False) -> List[dict]:
        """results.json, results.csv, table.md (and the plots).

        Raises:
            StudyError: see :meth:`check_nothing_lost`.
        """
        os.makedirs(self.out_dir, exist_ok=True)
        records = self.records()
        self.check_nothing_lost(records)
        summary = study_summary(self.study, self.base)
        atomic_write_text(
            osp.join(self.out_dir, 'results.json'),
            json.dumps(dict(study=summary, runs=records), indent=1),
        )
        write_csv(osp.join(self.out_dir, 'results.csv'), records)
        write_report(summary, records, self.out_dir, plots=plots)
        return records

    def lock(self):
        """Hold the study directory's lock (released when this process
        ends, however it ends).

        Raises:
            StudyError: another study holds it (its pid is named).
        """
        os.makedirs(self.out_dir, exist_ok=True)
        lock = open(osp.join(self.out_dir, LOCK_FILE), 'a+')
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or '?'
            lock.close()
            raise StudyError(
                f'another norm_study (pid {holder}) is running '
                f'in {self.out_dir}'
            ) from None
        lock.seek(0)
        lock.truncate()
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    def run(self) -> int:
        """Run every run not yet done. Returns how many failed."""
        self.base.check_registered(self.study)
        lock = self.lock()
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
        try:
            self.check_nothing_lost(self.records())
            self.check_finished_runs_match()
            return self._run_all()
        finally:
            signal.signal(signal.SIGTERM, previous)
            lock.close()

    def _run_all(self) -> int:
        runs = self.study.runs()
        todo, done_walls, diverged = [], [], 0
        for run in runs:
            state = read_state(self.run_dir(run))
            status = state.get('result', {}).get('status')
            if status in FINAL:
                done_walls.append(wall_time(state) or 0.0)
                diverged += status != 'finished'
            else:
                todo.append(run)
        total = len(runs)
        self.echo(
            f'{self.study.name}: {total} runs '
            f'({_count(self.study.norms, "normaliser")} x '
            f'{_count(self.study.cells(), "setting")} x '
            f'{_count(self.study.seeds, "seed")}) in {self.out_dir}; '
            f'{total - len(todo)} done already'
        )
        failed = 0
        for index, run in enumerate(todo):
            mean = (sum(done_walls) / len(done_walls)) if done_walls else None
            eta = None if mean is None else mean * (len(todo) - index)
            self.echo(
                f'{total - len(todo) + index}/{total} runs done '
                f'({diverged} diverged/collapsed, {failed} failed); '
                f'ETA {format_seconds(eta)}'
            )
            outcome, wall = self._run_one(
                run, total - len(todo) + index + 1, total, mean
            )
            if outcome['status'] in FINAL:
                done_walls.append(wall)
                diverged += outcome['status'] != 'finished'
            else:
                failed += 1
            self.write_results()
        self.write_results(plots=True)
        self.echo(
            f'{total}/{total} runs done ({diverged} diverged/'
            f'collapsed, {failed} failed); results in '
            f'{self.out_dir}'
        )
        return failed

    def check_not_running(self, run: Run, state: dict) -> None:
        """Raise if the run's training from an earlier study still lives
        (a study killed where its watchdog could not act)."""
        pgid = state.get('pgid')
        if pgid is None:
            return
        live = live_processes(pgid, self.run_dir(run))
        if live:
            raise StudyError(
                f'run {run.name}: its training from an earlier study is '
                f'still running (process group {pgid}, pids '
                f'{", ".join(map(str, live))}); stop it (kill -- -{pgid}) '
                'or let it end, then run the study again'
            )

    def _run_one(
        self, run: Run, position: int, total: int, mean_wall: Optional[float]
    ):
        run_dir = self.run_dir(run)
        state = read_state(run_dir)
        self.check_not_running(run, state)
        resume = has_checkpoint(run_dir)
        if not resume and osp.isdir(run_dir):
            # Interrupted before its first checkpoint: nothing to keep.
            shutil.rmtree(run_dir)
            state = {}
        os.makedirs(run_dir, exist_ok=True)
        close_open_segment(run_dir, state)
        state.pop('result', None)
        command = train_command(self.study, self.base, run, run_dir, resume)
        state.update(run=asdict(run), command=command)
        state.setdefault('segments', []).append([time.time(), None])
        write_state(run_dir, state)
        lr = run_lr(self.study, self.base, run)
        self.echo(
            f'run {position}/{total}: {run.name} '
            f'({self.study.label(run.norm)}, batch {run.batch_size}, '
            f'lr x{format_mult(run.lr_mult)} = {lr:.4g}, '
            f'seed {run.seed})'
            f'{", resuming from its last checkpoint" if resume else ""}'
            f'; log {osp.join(run_dir, LOG_FILE)}'
        )
        epochs = run_max_epochs(self.study, self.base, run)
        returncode = self._train(command, run_dir, state, mean_wall, epochs)
        state['segments'][-1][1] = time.time()
        outcome = run_outcome(self.study, run_dir, returncode, epochs)
        state['result'] = outcome
        if outcome['status'] in FINAL:
            keep_checkpoints(run_dir, self.study.keep_checkpoints)
        write_state(run_dir, state)
        wall = wall_time(state)
        final = outcome.get('final')
        metric = (
            'no metric'
            if final is None
            else f'final {self.study.metric} {final:.4g} '
            f'(best {outcome["best"]:.4g} at epoch '
            f'{outcome["best_epoch"]})'
        )
        error = f': {outcome["error"]}' if outcome.get('error') else ''
        self.echo(
            f'run {position}/{total}: {run.name} {outcome["status"]}, '
            f'{metric}, {format_seconds(wall)}{error}'
        )
        return outcome, wall

    def _train(
        self,
        command: List[str],
        run_dir: str,
        state: dict,
        mean_wall: Optional[float],
        epochs: Optional[int],
    ) -> int:
        log_path = osp.join(run_dir, LOG_FILE)
        with open(log_path, 'a') as log:
            log.write(
                f'\n== norm_study: segment {len(state["segments"])}, '
                f'{datetime.datetime.now():%Y-%m-%d %H:%M:%S}\n'
                f'== {" ".join(command)}\n'
            )
            log.flush()
            cpu = _children_cpu()
            # A process group of its own under a watchdog, so that stopping
            # the run (or killing the study) reaches every process of it.
            proc = subprocess.Popen(
                watched(command),
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT_ROOT,
                env=self.env,
                start_new_session=True,
            )
            state['pgid'] = proc.pid
            write_state(run_dir, state)
            try:
                returncode = self._wait(
                    proc, log_path, state, mean_wall, epochs
                )
                state['cpu_s'] = (
                    state.get('cpu_s', 0.0) + _children_cpu() - cpu
                )
                return returncode
            except BaseException:
                # Interrupted (Ctrl-C, SIGTERM): stop the run; the next
                # invocation resumes it from its last checkpoint.
                stop_group(proc)
                state['segments'][-1][1] = time.time()
                write_state(run_dir, state)
                raise

    def _wait(
        self,
        proc,
        log_path: str,
        state: dict,
        mean_wall: Optional[float],
        epochs: Optional[int],
    ) -> int:
        start = state['segments'][-1][0]
        next_report = time.time() + self.progress_interval
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass
            if time.time() < next_report:
                continue
            next_report = time.time() + self.progress_interval
            progress = progress_in_log(log_path)
            where = ''
            if progress is not None:
                epoch, it, per_epoch = progress
                of = f'/{epochs}' if epochs else ''
                where = f'epoch {epoch}{of}, iteration {it}/{per_epoch}, '
            self.echo(
                f'  ... {where}{format_seconds(time.time() - start)} '
                f'in this segment (a run takes '
                f'{format_seconds(mean_wall)} on average)'
            )

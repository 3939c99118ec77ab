"""Distributed runs of the tools: which process is the main one, a
process group on machines without CUDA (gloo instead of nccl), and the
end of a finished rank (``tools/train.py``, ``tools/test.py``)."""

import contextlib
import datetime
import logging
import os
import sys

import torch
import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.logging import print_log

__all__ = [
    'is_main_process',
    'setup_cpu_distributed',
    'destroy_process_group_on_exit',
    'exit_finished_rank',
]

# Where each launcher puts a process's global rank.
_RANK_VARIABLES = ('RANK', 'SLURM_PROCID', 'OMPI_COMM_WORLD_RANK')


def is_main_process() -> bool:
    """Whether this process is rank 0 of its launch (or not launched by
    torchrun, slurm or mpirun), read from the launcher's environment
    before any process group exists."""
    for name in _RANK_VARIABLES:
        if os.environ.get(name):
            return os.environ[name] == '0'
    return True


def setup_cpu_distributed(cfg: Config, launcher: str) -> None:
    """Make a distributed run work without CUDA.

    mmengine's launchers call ``torch.cuda.set_device`` and wrap the model with
    ``device_ids=[LOCAL_RANK]``, both of which fail on a CPU-only machine, and
    the default backend (nccl) needs GPUs. When CUDA is unavailable this
    switches ``env_cfg.dist_cfg.backend`` to 'gloo', initialises the process
    group from torchrun's environment itself (mmengine then uses it as is),
    and wraps the model with ``device_ids=None``. It does nothing when CUDA is
    available or ``launcher`` is 'none'.

    Args:
        cfg (Config): The config; modified in place.
        launcher (str): The ``--launcher`` argument.

    Raises:
        ValueError: For a launcher other than 'pytorch' without CUDA.
    """
    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise ValueError(
            f'--launcher {launcher} needs CUDA; on a CPU-only machine launch '
            'with torchrun and --launcher pytorch (tools/dist_train.sh).'
        )
    backend = cfg.get('env_cfg', {}).get('dist_cfg', {}).get('backend')
    if backend != 'gloo':
        print_log(
            f"CUDA is not available: using the 'gloo' backend instead of "
            f'{backend!r}.',
            logger='current',
        )
    cfg.merge_from_dict({'env_cfg.dist_cfg.backend': 'gloo'})
    if not torch_dist.is_initialized():
        kwargs = cfg.env_cfg.dist_cfg.to_dict()
        if kwargs.get('timeout') is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=kwargs['timeout'])
        torch_dist.init_process_group(**kwargs)
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel',
            device_ids=None,
            broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False),
        )
    else:
        wrapper.setdefault('device_ids', None)


@contextlib.contextmanager
def destroy_process_group_on_exit():
    """Destroy the default process group when the block ends, however it ends.

    A process that exits with a gloo group alive can die in the interpreter's
    teardown (``terminate called without an active exception``, SIGABRT)
    after its work is done, because gloo's worker threads still hold tensors
    then (pytorch/pytorch#190489): torchrun then reports the whole run as
    failed. Destroying the group while Python is alive avoids it. Nothing
    happens in a process without a process group.
    """
    try:
        yield
    finally:
        if torch_dist.is_available() and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def exit_finished_rank() -> None:
    """End a rank of a distributed run that finished its work, skipping the
    interpreter's teardown; do nothing in a process that is not one.

    With gloo, a rank can still abort in that teardown after its process
    group is destroyed (SIGABRT, ``terminate called without an active
    exception``: threads of torch's distributed runtime that outlive
    Python's objects, pytorch/pytorch#190489), and torchrun then fails the
    whole run although every rank finished. ``tools/train.py`` and
    ``tools/test.py`` call this after a successful ``main()``: logging and
    the standard streams are flushed, and the process exits with status 0.
    A rank is a process started with ``WORLD_SIZE`` above 1.
    """
    if int(os.environ.get('WORLD_SIZE', '1')) <= 1:
        return
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

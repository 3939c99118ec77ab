"""The norm layers' CPU time inside inference forward passes of whole
models (``profile_dn_layer.py --in-model``).

Alone, a layer finds its weights and input in cache from its previous
call; here each layer runs where it runs in a model, with BN, with DN-B,
and with DN-B's layers as the C++ op's call alone, in turns.
"""

import statistics
import time

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from dn_mmdet.norm import DynamicNorm2d
from dn_mmdet.norm.base import NormLayer
from dn_mmdet.norm.functional import UNBOUNDED, clamp_bounds

from .cases import DEFAULT_CONFIG, build_steps

#: The benchmark's variants built: BN and DN-B.
IN_MODEL_VARIANTS = ('bn', 'dnb-r16-goup')
#: The columns: BN's model, DN-B's, and DN-B's with each layer's forward
#: replaced by :func:`op_alone`.
IN_MODEL_RUNS = ('bn', 'dn', 'op')
#: Written before each cold read: more than this machine's last-level cache
#: (32 MiB of L3 on the project's 2-vCPU machines).
EVICT_BYTES = 128 * 2**20


def _inside_norm_layers(model):
    """ids of the modules inside dn_mmdet's norm layers (a DN layer's
    statistics child and SC-Module): parts, not layers."""
    return {
        id(child)
        for m in model.modules()
        if isinstance(m, NormLayer)
        for child in m.modules()
        if child is not m
    }


def norm_layers(model):
    """The model's norm layers in module order: dn_mmdet's and BatchNorms
    (not those inside dn_mmdet's)."""
    inside = _inside_norm_layers(model)
    return [
        m
        for m in model.modules()
        if isinstance(m, (NormLayer, _BatchNorm)) and id(m) not in inside
    ]


class NormLayerTimer:
    """Adds up the time each norm layer of ``model`` takes in its forward
    passes, with the clamp activation that runs right after it (BN's ReLU6;
    in DN's model, fused ConvModules call DN's ``forward_clamped`` and no
    clamp).

    The modules' ``forward`` (and DN's ``forward_clamped``) methods are
    wrapped as instance attributes, not hooked: a forward hook would make
    a fused ConvModule run unfused (see
    :func:`dn_mmdet.norm.functional.has_forward_hooks`). Convolutions are
    wrapped too, untimed, so that an activation after a convolution is not
    counted to the norm layer before it.

    Args:
        model (nn.Module): Its :func:`norm_layers` are timed.
        clock (callable): Seconds, e.g. ``time.process_time``.

    Attributes:
        layers (list[nn.Module]): The timed norm layers.
        seconds (list[float]): Per layer, its time since :meth:`reset`.
        input_shapes (list[tuple]): Per layer, its last input's shape.
        replacements (list): Per layer, a function run instead of its
            forward while :attr:`replace` is True (None: none).
        replace (bool): See ``replacements``.
    """

    def __init__(self, model, clock=time.process_time):
        self.layers = norm_layers(model)
        self.clock = clock
        self.seconds = [0.0] * len(self.layers)
        self.input_shapes = [None] * len(self.layers)
        self.replacements = [None] * len(self.layers)
        self.replace = False
        self._last = None  # the layer whose output the next module may take
        self._inside = None  # the norm layer being timed now
        for index, layer in enumerate(self.layers):
            self._wrap(layer, index)
            if isinstance(layer, DynamicNorm2d):
                self._wrap(layer, index, 'forward_clamped')
        inside = _inside_norm_layers(model)
        for module in model.modules():
            if id(module) in inside:
                continue
            if clamp_bounds(module) is not None:
                self._wrap(module, 'activation')
            elif isinstance(module, _ConvNd):
                self._wrap(module, 'other')

    def reset(self):
        self.seconds = [0.0] * len(self.layers)
        self._last = None

    def _wrap(self, module, role, method='forward'):
        """``role``: the index of a norm layer, ``'activation'`` or
        ``'other'``."""
        forward = getattr(module, method)

        def timed(*args, **kwargs):
            if role == self._inside:
                # DN's forward calling its (wrapped) forward_clamped: the
                # outer call times both.
                return forward(*args, **kwargs)
            run = forward
            if self.replace and isinstance(role, int):
                run = self.replacements[role] or forward
            self._inside = role if isinstance(role, int) else None
            start = self.clock()
            try:
                out = run(*args, **kwargs)
            finally:
                self._inside = None
            elapsed = self.clock() - start
            if role == 'activation':
                if self._last is not None:
                    self.seconds[self._last] += elapsed
                self._last = None
            elif role == 'other':
                self._last = None
            else:
                self.seconds[role] += elapsed
                self.input_shapes[role] = tuple(args[0].shape)
                self._last = role
            return out

        setattr(module, method, timed)


def op_alone(layer):
    """A DN-B layer's inference as the C++ op's call alone, its arguments
    gathered beforehand: what the layer would cost without Python of its
    own (``forward(x)`` or ``forward_clamped(x, bounds)``). None for other
    layers."""
    if not (isinstance(layer, DynamicNorm2d) and layer.mode == 'B'):
        return None
    w1, b1, w2, scale, shift, mean, var = [
        t.detach() for t in layer._op_tensors()
    ]
    groups, eps = layer.sc.fc2.groups, layer.eps

    def forward(x, bounds=UNBOUNDED):
        return torch.ops.dn_mmdet.dn_b_inference(
            x, w1, b1, w2, groups, scale, shift, mean, var, eps, *bounds
        )

    return forward


def sc_weight_tensors(layer):
    """The SC-Module's weights of a DN layer (none for other layers)."""
    sc = layer._modules.get('sc')
    return [] if sc is None else [p.detach() for p in sc.parameters()]


def read_ms(tensors, rounds):
    """Median ms to read ``tensors`` (one ``sum`` each) right after
    :data:`EVICT_BYTES` were written (cold), and again at once (warm)."""
    evict = torch.empty(EVICT_BYTES // 4)
    cold, warm = [], []
    for _ in range(rounds):
        evict.fill_(1.0)
        for times in (cold, warm):
            start = time.process_time()
            for t in tensors:
                t.sum()
            times.append((time.process_time() - start) * 1e3)
    return statistics.median(cold), statistics.median(warm)


def profile_in_model(model_name, batch, size, rounds, config=DEFAULT_CONFIG):
    """Per norm layer, the median CPU time (us) in ``model_name``'s
    inference forward passes with BN (``'bn'``), with DN-B (``'dn'``) and
    with DN-B's layers as the op alone (``'op'``), the three in turns.

    Args:
        model_name (str): A model of the benchmark (not ``'layer'``).
        batch (int): Images a forward pass.
        size (int): Input side.
        rounds (int): Timed forward passes of each (after one untimed).
        config (str): See :func:`.cases.build_model`.

    Returns:
        tuple: ``(rows, totals, sc_tensors)``. A row is ``(input shape, SC
        weight bytes, {run: us})``; ``totals`` maps ``'forward'`` and
        ``'norm'`` (all the layers with their activations) to ``{run:
        median ms over the rounds}``; ``sc_tensors`` are all the
        SC-Modules' weights.
    """
    models = {}
    for variant in IN_MODEL_VARIANTS:
        steps = build_steps(model_name, variant, batch, size, config)
        steps.set_mode(False)
        with torch.no_grad():
            steps.infer_step()
        models[variant] = (steps.infer_step, NormLayerTimer(steps.model))
    (bn_step, bn_timer), (dn_step, dn_timer) = models.values()
    if len(bn_timer.layers) != len(dn_timer.layers):
        raise RuntimeError(
            f'{model_name}: {len(bn_timer.layers)} norm layers with BN but '
            f'{len(dn_timer.layers)} with DN-B'
        )
    dn_timer.replacements = [op_alone(layer) for layer in dn_timer.layers]
    runs = {
        'bn': (bn_step, bn_timer, False),
        'dn': (dn_step, dn_timer, False),
        'op': (dn_step, dn_timer, True),
    }
    per_layer = {run: [] for run in runs}
    totals = {key: {run: [] for run in runs} for key in ('forward', 'norm')}
    with torch.no_grad():
        for _ in range(rounds + 1):  # the first round warms up
            for run, (infer_step, timer, replace) in runs.items():
                timer.reset()
                timer.replace = replace
                start = time.process_time()
                infer_step()
                totals['forward'][run].append(time.process_time() - start)
                totals['norm'][run].append(sum(timer.seconds))
                per_layer[run].append(timer.seconds)
                timer.replace = False
    layer_us = {
        run: [statistics.median(t[1:]) * 1e6 for t in zip(*per_layer[run])]
        for run in runs
    }
    totals = {
        key: {run: statistics.median(t[1:]) * 1e3 for run, t in by_run.items()}
        for key, by_run in totals.items()
    }
    sc_tensors = [sc_weight_tensors(layer) for layer in dn_timer.layers]
    rows = [
        (
            dn_timer.input_shapes[i],
            sum(t.numel() * t.element_size() for t in sc_tensors[i]),
            {run: layer_us[run][i] for run in runs},
        )
        for i in range(len(dn_timer.layers))
    ]
    return rows, totals, [t for ts in sc_tensors for t in ts]


def in_model_row(label, shape, sc_kib, times):
    """A row of :func:`format_in_model`'s table."""
    bn, dn, op = (times[run] for run in IN_MODEL_RUNS)
    return (
        f'| {label} | {shape} | {sc_kib:.1f} | {bn:.0f} | {dn:.0f} | '
        f'{op:.0f} | {dn - bn:+.0f} | {dn - op:.0f} | {op - bn:+.0f} |'
    )


def format_in_model(title, rows, totals, read_times, threads, rounds):
    """The report of :func:`profile_in_model`'s figures (and
    :func:`read_ms`'s ``(cold, warm)`` of the SC-Modules' weights) as
    lines."""
    lines = [
        f'\n{title}, inside inference forward passes: CPU time of '
        f'{threads} thread(s), median of {rounds} forward passes of BN, '
        "DN-B (r=16, g=oup) and DN-B with each layer as the op's call "
        'alone, in turns; a layer with the clamp activation that runs '
        'right after it (us)\n',
        '| layer | input | SC weights KiB | BN+act | DN | DN op alone | '
        'DN-BN | DN: Python | op alone - BN |',
        '|---' * 9 + '|',
    ]
    for i, (shape, nbytes, times) in enumerate(rows):
        lines.append(
            in_model_row(
                i + 1, 'x'.join(map(str, shape)), nbytes / 1024, times
            )
        )
    sc_bytes = sum(row[1] for row in rows)
    norm, forward = totals['norm'], totals['forward']
    lines.append(
        in_model_row(
            f'all {len(rows)} (median of the sums)',
            '',
            sc_bytes / 1024,
            {k: v * 1e3 for k, v in norm.items()},
        )
    )
    lines.append(
        f'\nWhole forward (ms): BN {forward["bn"]:.2f}, DN-B '
        f'{forward["dn"]:.2f} ({forward["dn"] / forward["bn"]:.2f}x), '
        f'DN-B as ops alone {forward["op"]:.2f} '
        f'({forward["op"] / forward["bn"]:.2f}x); outside the norm layers '
        f'and their activations: BN {forward["bn"] - norm["bn"]:.2f}, '
        f'DN-B {forward["dn"] - norm["dn"]:.2f}.'
    )
    cold, warm = read_times
    lines.append(
        f"The SC-Modules' weights, {sc_bytes / 2**20:.2f} MiB: reading "
        f'them took {cold:.2f} ms after evicting the caches '
        f'({EVICT_BYTES // 2**20} MiB written), {warm:.2f} ms warm.'
    )
    return lines

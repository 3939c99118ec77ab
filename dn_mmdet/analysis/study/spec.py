"""A normaliser study's spec: the grid of runs it names, checked.

A *spec* is an mmengine config under ``configs/studies/`` naming a base
training config, the normalisers (``configs/studies/_base_/norms.py``) and
the grid (normalisers x batch sizes x lr multipliers x seeds).
"""

import os.path as osp
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

#: The repository holding the package: relative paths of a spec (its base
#: config, its training script) are read from here.
PROJECT_ROOT = str(Path(__file__).resolve().parents[3])
GRIDS = ('axes', 'full')
LR_SCALINGS = ('none', 'linear')
KEEP_CHECKPOINTS = ('all', 'last', 'none')
#: Which settings of an ``axes`` grid a normaliser runs (``norm_settings``):
#: every one, the batch sweep at the reference lr, the lr sweep at the
#: reference batch, or the reference alone.
NORM_SETTINGS = ('all', 'batch', 'lr', 'reference')

# The spec's keys with their defaults (None: required).
SPEC_DEFAULTS = dict(
    base_config=None,
    metric=None,
    # 'greater' (accuracy, mAP) or 'less' (an error rate) is better.
    rule='greater',
    # Tables and plots show metric * metric_scale under metric_label.
    metric_scale=1.0,
    metric_label=None,
    collapse_below=None,
    # The metric of a guess (plots draw it; the claims page states it).
    chance=None,
    norm_library=None,
    norms=None,
    # {norm: one of NORM_SETTINGS}; a norm not named runs 'all'.
    norm_settings={},
    norm_keys=['model.backbone.norm_cfg'],
    conv_keys=['model.backbone.conv_cfg'],
    batch_size_key='train_dataloader.batch_size',
    lr_key='optim_wrapper.optimizer.lr',
    lr_scaling='none',
    batch_sizes=None,
    lr_mults=[1],
    seeds=[0],
    grid='axes',
    deterministic=True,
    # CPU threads of a training process (OMP/MKL); None keeps the caller's.
    # Part of the spec because a thread count changes the float sums, and
    # with them a seeded run's result.
    threads=None,
    cfg_options={},
    # {str(batch_size): {dotted key: value}}: options of the runs at that
    # batch size (e.g. the paper's fewer epochs at small batches).
    batch_cfg_options={},
    train_script='tools/train.py',
    # Processes (GPUs) a run trains on; > 1 launches tools/dist_train.sh.
    # Batch sizes are per process: the batch BN's statistics see.
    gpus=1,
    keep_checkpoints='last',
    # The paper's claims this grid tests (.claims): dicts with key, text,
    # source, kind ('effect' or 'diverges') and terms, a list of
    # (coefficient, norm, batch_size, lr_mult).
    claims=[],
    presets={},
)
# Keys whose None is a value, not a missing key.
OPTIONAL_KEYS = ('metric_label', 'collapse_below', 'chance', 'threads')


class SpecError(ValueError):
    """A study spec that cannot be run (the message names the key)."""


def format_mult(mult: float) -> str:
    """``mult`` as short as it reads back exactly: 1.0 -> '1', 2.5 ->
    '2.5', 1.0000001 -> '1.0000001' (run names and table headers; two
    multipliers never share a text)."""
    short = f'{mult:g}'
    return short if float(short) == mult else repr(float(mult))


@dataclass(frozen=True)
class Run:
    """One training run of the grid."""

    norm: str
    batch_size: int
    lr_mult: float
    seed: int

    @property
    def name(self) -> str:
        return (
            f'{self.norm}_bs{self.batch_size}_'
            f'lr{format_mult(self.lr_mult)}x_seed{self.seed}'
        )


class Study:
    """A study spec, read from its file, preset applied and checked.

    Args:
        spec_path (str): The spec file (an mmengine config).
        preset (str, optional): A name in the spec's ``presets``; its keys
            replace the spec's, except ``cfg_options``, which it updates.
        overrides (dict, optional): Keys replacing the spec's after the
            preset (the command line's ``--norms`` etc.).

    Raises:
        SpecError: A missing or invalid key, an unknown preset or norm.
    """

    def __init__(
        self,
        spec_path: str,
        preset: Optional[str] = None,
        overrides: Optional[dict] = None,
    ):
        from mmengine.config import Config

        if not osp.isfile(spec_path):
            raise SpecError(f'study spec {spec_path} does not exist')
        self.spec_path = spec_path
        self.preset = preset
        raw = Config.fromfile(spec_path).to_dict()
        unknown = sorted(set(raw) - set(SPEC_DEFAULTS))
        if unknown:
            raise SpecError(
                f'{spec_path}: unknown key(s) {unknown}; a spec '
                f'has {sorted(SPEC_DEFAULTS)}'
            )
        spec = {**SPEC_DEFAULTS, **raw}
        if preset is not None:
            if preset not in spec['presets']:
                raise SpecError(
                    f'{spec_path}: no preset {preset!r}; presets: '
                    f'{sorted(spec["presets"]) or "none"}'
                )
            for key, value in spec['presets'][preset].items():
                if key not in SPEC_DEFAULTS or key == 'presets':
                    raise SpecError(
                        f'{spec_path}: presets.{preset} sets '
                        f'unknown key {key!r}'
                    )
                if key == 'cfg_options':
                    spec[key] = {**spec[key], **value}
                else:
                    spec[key] = value
        if overrides and 'claims' not in overrides:
            # The spec's claims are checked against its own grid; a grid
            # narrowed on the command line (--norms bn) keeps those of its
            # claims whose runs it still holds.
            narrowed = Study(spec_path, preset, {**overrides, 'claims': []})
            spec['claims'] = [
                claim
                for claim in Study(spec_path, preset).claims
                if all(
                    norm in narrowed.norms
                    and (batch, mult) in narrowed.cells(norm)
                    for _, norm, batch, mult in claim['terms']
                )
            ]
        spec.update(overrides or {})
        for key, value in spec.items():
            if value is None and key not in OPTIONAL_KEYS:
                raise SpecError(f'{spec_path}: {key} is required')
        self.spec = spec
        # The spec's keys as attributes: self.norms, self.grid, ...
        self.__dict__.update(spec)
        self._check()

    def _check(self) -> None:
        where = self.spec_path
        for key, allowed in (
            ('grid', GRIDS),
            ('lr_scaling', LR_SCALINGS),
            ('keep_checkpoints', KEEP_CHECKPOINTS),
            ('rule', ('greater', 'less')),
        ):
            if self.spec[key] not in allowed:
                raise SpecError(
                    f'{where}: {key} must be one of {allowed}, '
                    f'got {self.spec[key]!r}'
                )
        for key, kind in (
            ('batch_sizes', int),
            ('lr_mults', (int, float)),
            ('seeds', int),
            ('norms', str),
        ):
            values = self.spec[key]
            if (
                not isinstance(values, (list, tuple))
                or not values
                or not all(
                    isinstance(v, kind) and not isinstance(v, bool)
                    for v in values
                )
            ):
                raise SpecError(
                    f'{where}: {key} must be a non-empty list '
                    f'of {getattr(kind, "__name__", "numbers")}, '
                    f'got {values!r}'
                )
            if len(set(values)) != len(values):
                raise SpecError(f'{where}: {key} has duplicates: {values!r}')
        if any(b < 1 for b in self.batch_sizes):
            raise SpecError(
                f'{where}: batch_sizes must be >= 1, got {self.batch_sizes!r}'
            )
        for key in ('gpus', 'threads'):
            value = self.spec[key]
            if value is None and key == 'threads':
                continue
            if (
                not isinstance(value, int)
                or isinstance(value, bool)
                or value < 1
            ):
                raise SpecError(
                    f'{where}: {key} must be an int >= 1, got {value!r}'
                )
        for key in self.batch_cfg_options:
            # A key outside batch_sizes is allowed: a preset or --batch-sizes
            # may narrow the grid.
            if not (isinstance(key, str) and key.isdigit()):
                raise SpecError(
                    f'{where}: batch_cfg_options key {key!r} is '
                    "not a batch size as a string (e.g. '8')"
                )
        if any(not m > 0 for m in self.lr_mults):
            raise SpecError(
                f'{where}: lr_mults must be > 0, got {self.lr_mults!r}'
            )
        self._check_norms()
        self._check_claims()
        names = [run.name for run in self.runs()]
        clash = sorted({n for n in names if names.count(n) > 1})
        if clash:
            raise SpecError(
                f'{where}: runs {clash} would share a run '
                'directory; make the grid values distinct'
            )

    def _check_norms(self) -> None:
        where = self.spec_path
        for name in self.norms:
            if name not in self.norm_library:
                raise SpecError(
                    f'{where}: norm {name!r} is not in norm_library '
                    f'(configs/studies/_base_/norms.py or the spec); known: '
                    f'{sorted(self.norm_library)}'
                )
            entry = self.norm_library[name]
            if not isinstance(entry.get('norm_cfg'), dict) or not entry[
                'norm_cfg'
            ].get('type'):
                raise SpecError(
                    f'{where}: norm_library[{name!r}] needs a '
                    f"norm_cfg dict with a 'type'"
                )
            extra = set(entry) - {
                'label',
                'norm_cfg',
                'conv_cfg',
                'cfg_options',
            }
            if extra:
                raise SpecError(
                    f'{where}: norm_library[{name!r}] has '
                    f'unknown key(s) {sorted(extra)}'
                )
        for name, which in self.norm_settings.items():
            if which not in NORM_SETTINGS:
                raise SpecError(
                    f'{where}: norm_settings[{name!r}] must be '
                    f'one of {NORM_SETTINGS}, got {which!r}'
                )
            if which != 'all' and self.grid != 'axes':
                raise SpecError(
                    f'{where}: norm_settings[{name!r}] needs '
                    f"grid='axes' (got {self.grid!r})"
                )

    def _check_claims(self) -> None:
        where = self.spec_path
        for index, claim in enumerate(self.claims):
            at = f'{where}: claims[{index}]'
            missing = {'key', 'text', 'source', 'kind', 'terms'} - set(claim)
            if missing:
                raise SpecError(f'{at} lacks {sorted(missing)}')
            if claim['kind'] not in ('effect', 'diverges'):
                raise SpecError(
                    f"{at}: kind must be 'effect' or "
                    f"'diverges', got {claim['kind']!r}"
                )
            if claim['kind'] == 'diverges' and len(claim['terms']) != 1:
                raise SpecError(f"{at}: a 'diverges' claim has one term")
            for term in claim['terms']:
                if len(term) != 4:
                    raise SpecError(
                        f'{at}: a term is (coefficient, norm, '
                        f'batch_size, lr_mult), got {term!r}'
                    )
                _, norm, batch, mult = term
                if norm not in self.norms or (batch, mult) not in self.cells(
                    norm
                ):
                    raise SpecError(
                        f'{at}: ({norm!r}, batch {batch}, lr '
                        f'x{mult}) is not a run of this grid'
                    )

    # ------------------------------------------------------------------ #
    @property
    def name(self) -> str:
        stem = osp.splitext(osp.basename(self.spec_path))[0]
        return stem if self.preset is None else f'{stem}_{self.preset}'

    @property
    def base_config_path(self) -> str:
        path = self.base_config
        return path if osp.isabs(path) else osp.join(PROJECT_ROOT, path)

    @property
    def reference(self):
        """(batch size, lr multiplier) that the axes grid varies around."""
        return self.batch_sizes[0], self.lr_mults[0]

    def label(self, norm: str) -> str:
        return self.norm_library[norm].get('label', norm)

    def cells(self, norm: Optional[str] = None) -> List[tuple]:
        """The (batch size, lr multiplier) settings of the grid, or those
        ``norm`` runs (``norm_settings``)."""
        if self.grid == 'full':
            return [(b, m) for m in self.lr_mults for b in self.batch_sizes]
        ref_batch, ref_mult = self.reference
        batch = [(b, ref_mult) for b in self.batch_sizes]
        lr = [(ref_batch, m) for m in self.lr_mults[1:]]
        which = 'all' if norm is None else self.norm_settings.get(norm, 'all')
        return dict(
            all=batch + lr, batch=batch, lr=batch[:1] + lr, reference=batch[:1]
        )[which]

    def runs(self) -> List[Run]:
        """Every run, seed by seed, then setting by setting."""
        return [
            Run(norm, batch, float(mult), seed)
            for seed in self.seeds
            for batch, mult in self.cells()
            for norm in self.norms
            if (batch, mult) in self.cells(norm)
        ]

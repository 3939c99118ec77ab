"""What a study's run trains: the base config and the run's overrides.

Every run is one process of the normal training tool::

    python tools/train.py BASE --work-dir OUT/runs/<run> --cfg-options \\
        model.backbone.norm_cfg._delete_=True \\
        model.backbone.norm_cfg.type=DN ... train_dataloader.batch_size=2 \\
        optim_wrapper.optimizer.lr=0.0125 randomness.seed=0 \\
        randomness.deterministic=True [--resume]
"""

import os.path as osp
import sys
from typing import Any, Dict, List

from .spec import PROJECT_ROOT, Run, SpecError, Study

BATCH_PLACEHOLDER = '{batch_size}'


def get_key(tree: dict, key: str):
    """``tree[a][b][c]`` for ``key='a.b.c'``; KeyError if absent."""
    node = tree
    for part in key.split('.'):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


class BaseConfig:
    """The study's base config, with the spec's ``cfg_options`` merged.

    Loading it imports the config's ``custom_imports`` (dn_mmdet, ...), so
    the normalisers' registry entries can be checked before any run starts.

    Args:
        study (Study): The study.

    Raises:
        SpecError: The base config is missing, the options do not merge, or
            a key the study sets (lr, batch size, norm) is not in it.
    """

    def __init__(self, study: Study):
        from mmengine.config import Config

        path = study.base_config_path
        if not osp.isfile(path):
            raise SpecError(
                f'{study.spec_path}: base_config {path} does not exist'
            )
        cfg = Config.fromfile(path)
        try:
            cfg.merge_from_dict(dict(study.cfg_options))
        except Exception as err:
            raise SpecError(
                f'{study.spec_path}: cfg_options cannot be '
                f'merged into {path}: {err}'
            ) from err
        self.path = path
        self.cfg = cfg
        self.tree = cfg.to_dict()
        try:
            self.lr = float(get_key(self.tree, study.lr_key))
        except (KeyError, TypeError, ValueError):
            raise SpecError(
                f'{study.spec_path}: lr_key {study.lr_key!r} is '
                f'not a number in {path}'
            ) from None
        try:
            get_key(self.tree, study.batch_size_key)
        except KeyError:
            raise SpecError(
                f'{study.spec_path}: batch_size_key '
                f'{study.batch_size_key!r} is not in '
                f'{path}'
            ) from None
        for key in study.norm_keys:
            try:
                get_key(self.tree, key)
            except KeyError:
                raise SpecError(
                    f'{study.spec_path}: norm key {key!r} is not '
                    f'in {path}; set norm_keys to where the '
                    'norm_cfg is'
                ) from None
        train_cfg = cfg.get('train_cfg') or {}
        self.max_epochs = train_cfg.get('max_epochs')

    def check_registered(self, study: Study) -> None:
        """Raise if a selected normaliser's layer types are not registered.

        Raises:
            SpecError: naming the normaliser and the type.
        """
        from mmengine.registry import MODELS, init_default_scope

        scope = self.cfg.get('default_scope')
        if scope:
            init_default_scope(scope)
        for name in study.norms:
            entry = study.norm_library[name]
            for field in ('norm_cfg', 'conv_cfg'):
                cfg = entry.get(field)
                if cfg and MODELS.get(cfg['type']) is None:
                    raise SpecError(
                        f'norm {name!r}: {field} type {cfg["type"]!r} is not '
                        f'registered (after importing the custom_imports of '
                        f'{self.path}); is the layer implemented?'
                    )


def _substitute(value, batch_size: int):
    if isinstance(value, dict):
        return {k: _substitute(v, batch_size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_substitute(v, batch_size) for v in value)
    return batch_size if value == BATCH_PLACEHOLDER else value


def _flatten(prefix: str, value, out: Dict[str, Any]) -> None:
    """``{prefix: value}`` as dotted ``--cfg-options`` keys."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f'{prefix}.{k}', v, out)
    else:
        out[prefix] = value


def _replace(tree: dict, key: str, value, out: Dict[str, Any]) -> None:
    """Options that set ``key`` to ``value``, replacing what ``tree`` (the
    base config) has.

    A dict merges into the base's dict, so it is preceded by
    ``key._delete_=True``; mmengine only removes that marker (and the old
    dict) where the key exists, so it is left out where it does not.
    """
    if isinstance(value, dict):
        try:
            get_key(tree, key)
            out[f'{key}._delete_'] = True
        except KeyError:
            pass
    _flatten(key, value, out)


def run_lr(study: Study, base: BaseConfig, run: Run) -> float:
    """The run's lr: base lr x multiplier (x batch / reference batch with
    ``lr_scaling='linear'``)."""
    lr = base.lr * run.lr_mult
    if study.lr_scaling == 'linear':
        lr *= run.batch_size / study.reference[0]
    return lr


def run_options(study: Study, base: BaseConfig, run: Run) -> Dict[str, Any]:
    """The config changes of ``run`` as ordered ``{dotted key: value}``:
    the spec's ``cfg_options`` and those of the run's batch size, the
    normaliser, batch size, lr and seed."""
    options: Dict[str, Any] = dict(study.cfg_options)
    options.update(study.batch_cfg_options.get(str(run.batch_size), {}))
    entry = _substitute(study.norm_library[run.norm], run.batch_size)
    for field, keys in (
        ('norm_cfg', study.norm_keys),
        ('conv_cfg', study.conv_keys),
    ):
        if field in entry:
            for key in keys:
                _replace(base.tree, key, entry[field], options)
    options.update(entry.get('cfg_options', {}))
    options[study.batch_size_key] = run.batch_size
    options[study.lr_key] = run_lr(study, base, run)
    options['randomness.seed'] = run.seed
    options['randomness.deterministic'] = bool(study.deterministic)
    return options


def run_max_epochs(study: Study, base: BaseConfig, run: Run):
    """The epochs ``run`` trains: its ``train_cfg.max_epochs`` option (a
    batch size's, say), else the base config's (None if it has none)."""
    options = run_options(study, base, run)
    return options.get('train_cfg.max_epochs', base.max_epochs)


def _normalise(v):
    if isinstance(v, (list, tuple)):
        return [_normalise(x) for x in v]
    return v


def format_option(key: str, value) -> str:
    """``key=value`` as ``--cfg-options`` parses it back to ``value``.

    Raises:
        SpecError: a value ``--cfg-options`` cannot express (a string with
            a comma or that reads as a number, a dict inside a list, ...).
    """
    from mmengine.config import DictAction

    def text(v) -> str:
        if isinstance(v, (list, tuple)):
            inner = ','.join(text(x) for x in v)
            return f'[{inner}]' if isinstance(v, list) else f'({inner})'
        if isinstance(v, float):
            return repr(v)
        if v is None or isinstance(v, (bool, int, str)):
            return str(v)
        raise SpecError(
            f'cfg option {key}: cannot pass a {type(v).__name__}'
            f' ({v!r}) on the command line'
        )

    formatted = text(value)
    parsed = DictAction._parse_iterable(formatted)
    if _normalise(parsed) != _normalise(value):
        raise SpecError(
            f'cfg option {key}={value!r} would be read back as '
            f'{parsed!r}; use a value --cfg-options can express'
        )
    return f'{key}={formatted}'


def train_command(
    study: Study, base: BaseConfig, run: Run, run_dir: str, resume: bool
) -> List[str]:
    """The ``tools/train.py`` command line of ``run`` (``dist_train.sh``
    with ``gpus`` > 1)."""
    script = study.train_script
    if not osp.isabs(script):
        script = osp.join(PROJECT_ROOT, script)
    if study.gpus > 1:
        launch = [
            'bash',
            osp.join(osp.dirname(script), 'dist_train.sh'),
            base.path,
            str(study.gpus),
        ]
    else:
        launch = [sys.executable, script, base.path]
    options = [
        format_option(k, v) for k, v in run_options(study, base, run).items()
    ]
    command = launch + ['--work-dir', run_dir, '--cfg-options', *options]
    return command + (['--resume'] if resume else [])

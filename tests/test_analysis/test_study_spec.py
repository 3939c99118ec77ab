"""dn_mmdet.analysis.study.spec and options: which runs a spec names and
what each trains (no training here)."""

from pathlib import Path

import pytest
from helpers import REPO

from dn_mmdet.analysis.study import (
    BaseConfig,
    Run,
    SpecError,
    Study,
    format_mult,
    run_options,
)

CLS_BASE = (
    'configs/studies/_base_/claims/'
    'mobilenet-v2-x0.5-bn_1xb32-sgd-16e_shapes-cls64.py'
)
NORMS_BASE = REPO / 'configs/studies/_base_/norms.py'


def write_spec(path: Path, **keys) -> Path:
    spec = dict(
        base_config=CLS_BASE,
        metric='accuracy/top1',
        norms=['bn', 'dnb-r16-g1', 'dnc1-r16', 'gn'],
        batch_sizes=[32, 8],
        lr_mults=[1, 2.5],
        seeds=[0],
    )
    spec.update(keys)
    lines = [f"_base_ = ['{NORMS_BASE}']"]
    lines += [f'{key} = {value!r}' for key, value in spec.items()]
    path.write_text('\n'.join(lines) + '\n')
    return path


def test_format_mult_is_exact_and_short():
    assert [format_mult(m) for m in (1.0, 2.5, 1e-3)] == ['1', '2.5', '0.001']
    assert format_mult(1.0000001) == '1.0000001'
    assert Run('bn', 2, 1.0000001, 0).name != Run('bn', 2, 1.0, 0).name


def test_lr_mults_that_print_alike_get_their_own_runs(tmp_path):
    """--lr-mults 1 1.0000001 used to give both runs one directory."""
    study = Study(
        str(write_spec(tmp_path / 's.py', norms=['bn'])),
        overrides=dict(lr_mults=[1, 1.0000001]),
    )
    names = [run.name for run in study.runs()]
    assert names == [
        'bn_bs32_lr1x_seed0',
        'bn_bs8_lr1x_seed0',
        'bn_bs32_lr1.0000001x_seed0',
    ]


def test_norm_settings_limit_a_norm_to_its_cells(tmp_path):
    spec = write_spec(
        tmp_path / 's.py',
        norm_settings={'gn': 'batch', 'dnc1-r16': 'reference'},
    )
    study = Study(str(spec))
    cells = {}
    for run in study.runs():
        cells.setdefault(run.norm, []).append((run.batch_size, run.lr_mult))
    assert cells['bn'] == cells['dnb-r16-g1'] == [(32, 1), (8, 1), (32, 2.5)]
    assert cells['gn'] == [(32, 1), (8, 1)]
    assert cells['dnc1-r16'] == [(32, 1)]
    with pytest.raises(SpecError, match=r"norm_settings\['gn'\] must be"):
        Study(str(write_spec(tmp_path / 'b.py', norm_settings={'gn': 'x'})))


def test_batch_cfg_options_reach_their_batch_only(tmp_path):
    spec = write_spec(
        tmp_path / 's.py', batch_cfg_options={'8': {'train_cfg.max_epochs': 6}}
    )
    study = Study(str(spec))
    base = BaseConfig(study)
    small = run_options(study, base, Run('bn', 8, 1.0, 0))
    ref = run_options(study, base, Run('bn', 32, 1.0, 0))
    assert small['train_cfg.max_epochs'] == 6
    assert 'train_cfg.max_epochs' not in ref
    with pytest.raises(SpecError, match="batch_cfg_options key 'b8'"):
        Study(str(write_spec(tmp_path / 'b.py', batch_cfg_options={'b8': {}})))


@pytest.mark.parametrize(
    'claim, message',
    [
        (
            dict(
                key='a',
                text='t',
                source='s',
                kind='effect',
                terms=[(1, 'gn', 32, 2.5)],
            ),
            r"\('gn', batch 32, lr x2.5\) is not",
        ),
        (
            dict(key='a', text='t', kind='effect', terms=[]),
            r"lacks \['source'\]",
        ),
        (
            dict(key='a', text='t', source='s', kind='guess', terms=[]),
            'kind must be',
        ),
    ],
)
def test_bad_claims_name_the_claim(tmp_path, claim, message):
    spec = write_spec(
        tmp_path / 's.py', norm_settings={'gn': 'batch'}, claims=[claim]
    )
    with pytest.raises(SpecError, match=r'claims\[0\]'):
        Study(str(spec))
    with pytest.raises(SpecError, match=message):
        Study(str(spec))


def test_threads_must_be_a_positive_int(tmp_path):
    with pytest.raises(SpecError, match='threads must be an int >= 1'):
        Study(str(write_spec(tmp_path / 's.py', threads=0)))


def test_a_narrowed_grid_keeps_the_claims_it_still_holds(tmp_path):
    """--norms bn on a spec with claims used to stop at 'claims[0] ... is
    not a run of this grid': a calibration run of one cell was impossible.
    The spec's own claims are still checked against its full grid."""

    def claim(key, *terms):
        return dict(key=key, text=key, source='s', kind='effect', terms=terms)

    spec = write_spec(
        tmp_path / 's.py',
        claims=[
            claim('bn-lr', (1, 'bn', 32, 2.5), (-1, 'bn', 32, 1)),
            claim('dnb', (1, 'dnb-r16-g1', 32, 1), (-1, 'bn', 32, 1)),
        ],
    )
    narrowed = Study(str(spec), overrides=dict(norms=['bn']))
    assert [c['key'] for c in narrowed.claims] == ['bn-lr']
    assert [r.name for r in narrowed.runs()] == [
        'bn_bs32_lr1x_seed0',
        'bn_bs8_lr1x_seed0',
        'bn_bs32_lr2.5x_seed0',
    ]
    assert Study(str(spec), overrides=dict(lr_mults=[1])).claims[0]['key'] == (
        'dnb'
    )
    bad = write_spec(tmp_path / 'b.py', claims=[claim('x', (1, 'sn', 32, 1))])
    with pytest.raises(SpecError, match=r"claims\[0\]: \('sn'"):
        Study(str(bad), overrides=dict(norms=['bn']))

"""dn_mmdet.analysis.study.claims and claims_page: the intervals, the
verdict rules, pending claims, and the committed tables regenerating."""

import json
import math
import statistics

import pytest
from helpers import REPO

from dn_mmdet.analysis.study import claims as claims_mod
from dn_mmdet.analysis.study.claims_page import BEGIN, END, write_claims_page
from dn_mmdet.analysis.study.tables import table_markdown


def test_t975_matches_the_table_and_the_normal_limit():
    assert claims_mod.t975(1) == 12.706
    assert claims_mod.t975(4) == 2.776
    assert claims_mod.t975(4.5) == pytest.approx((2.776 + 2.571) / 2)
    # Exact values: df 60 -> 2.000, df 120 -> 1.980.
    assert claims_mod.t975(60) == pytest.approx(2.000, abs=0.003)
    assert claims_mod.t975(120) == pytest.approx(1.980, abs=0.003)
    with pytest.raises(ValueError, match='df must be >= 1'):
        claims_mod.t975(0.5)


def test_welch_interval_of_two_groups():
    # Means 5 and 2, variances 1 and 1, n 3 each: se^2 = 2/3, df = 4.
    effect, low, high = claims_mod.welch_interval(
        [(1, [4, 5, 6]), (-1, [1, 2, 3])]
    )
    half = 2.776 * math.sqrt(2 / 3)
    assert effect == pytest.approx(3)
    assert (low, high) == (pytest.approx(3 - half), pytest.approx(3 + half))
    # No spread: the interval is the effect.
    assert claims_mod.welch_interval([(1, [2, 2]), (-1, [1, 1])]) == (1, 1, 1)
    with pytest.raises(ValueError, match='>= 2 values'):
        claims_mod.welch_interval([(1, [1.0])])


def _study(seeds=3):
    return dict(
        name='demo',
        spec='configs/studies/demo.py',
        metric='accuracy/top1',
        metric_scale=1,
        metric_label='top-1 (%)',
        chance=20.0,
        seeds=list(range(seeds)),
        norms=dict(bn='BN', dnb='DN-B', dnc='DN-C'),
    )


def _run(norm, batch, seed, status, final=None, curve=None):
    return dict(
        norm=norm,
        batch_size=batch,
        lr_mult=1.0,
        seed=seed,
        status=status,
        final=final,
        curve=curve or {},
    )


EFFECT = dict(
    key='k',
    kind='effect',
    text='DN-B beats BN at batch 4',
    source='DN Table 3',
    terms=[(1, 'dnb', 4, 1), (-1, 'bn', 4, 1)],
)


def test_effect_verdicts_follow_the_interval():
    study = _study()
    bn = [_run('bn', 4, s, 'finished', v) for s, v in enumerate([50, 52, 54])]
    better = [
        _run('dnb', 4, s, 'finished', v) for s, v in enumerate([70, 71, 72])
    ]
    same = [
        _run('dnb', 4, s, 'finished', v) for s, v in enumerate([49, 52, 55])
    ]
    worse = [
        _run('dnb', 4, s, 'finished', v) for s, v in enumerate([30, 31, 32])
    ]
    assert (
        claims_mod.judge(EFFECT, study, bn + better)['verdict'] == 'confirmed'
    )
    assert (
        claims_mod.judge(EFFECT, study, bn + same)['verdict']
        == 'not confirmed'
    )
    result = claims_mod.judge(EFFECT, study, bn + worse)
    assert result['verdict'] == 'contradicted'
    assert result['effect'] == pytest.approx(-21)
    assert result['high'] < 0


def test_a_diverged_run_counts_at_chance():
    study = _study()
    bn = [
        _run('bn', 4, 0, 'diverged'),
        _run('bn', 4, 1, 'finished', 60),
        _run('bn', 4, 2, 'finished', 61),
    ]
    dnb = [_run('dnb', 4, s, 'finished', 60) for s in range(3)]
    result = claims_mod.judge(EFFECT, study, bn + dnb)
    assert result['effect'] == pytest.approx(
        60 - statistics.fmean([20, 60, 61])
    )


def test_claims_with_missing_runs_are_pending_and_state_no_number():
    study = _study()
    runs = [_run('bn', 4, s, 'finished', 50) for s in range(3)]
    runs += [
        _run('dnb', 4, 0, 'finished', 70),
        _run('dnb', 4, 1, 'pending'),
        _run('dnb', 4, 2, 'failed'),
    ]
    result = claims_mod.judge(EFFECT, study, runs)
    assert (result['verdict'], result['done'], result['runs']) == (
        'pending',
        4,
        6,
    )
    table = claims_mod.claims_markdown(study, runs, [EFFECT])
    assert (
        '| DN-B beats BN at batch 4 | DN Table 3 | - | pending: 4 of 6 '
        'runs |' in table
    )


def test_divergence_is_counted():
    study = _study()
    claim = dict(
        key='c',
        kind='diverges',
        text='DN-C diverges',
        source='DN Table 1',
        terms=[(1, 'dnc', 32, 1)],
    )
    most = [
        _run('dnc', 32, 0, 'diverged'),
        _run('dnc', 32, 1, 'collapsed', 21.0),
        _run('dnc', 32, 2, 'finished', 80.0),
    ]
    result = claims_mod.judge(claim, study, most)
    assert (result['verdict'], result['diverged']) == ('confirmed', 2)
    assert result['scored'] == pytest.approx((21 + 80) / 2)
    none = [_run('dnc', 32, s, 'finished', 80.0) for s in range(3)]
    assert claims_mod.judge(claim, study, none)['verdict'] == 'contradicted'
    table = claims_mod.claims_markdown(study, most, [claim])
    assert '2 of 3 runs diverged or collapsed; the others end at 50.5' in table


def test_late_gain_reads_the_last_quarter():
    runs = [
        _run(
            'bn',
            4,
            0,
            'finished',
            60,
            {str(e): v for e, v in enumerate([20, 40, 55, 58, 60], 1)},
        ),
        _run('bn', 4, 1, 'diverged', None, {'1': 20}),
    ]
    # Epoch 4 of 5 is the nearest to 3/4: 60 - 58.
    assert claims_mod.late_gain(runs, 1) == pytest.approx(2)


def test_claims_page_keeps_the_prose(tmp_path):
    page = tmp_path / 'docs' / 'claims.md'
    page.parent.mkdir()
    page.write_text(f'# Title\n\nProse.\n\n{BEGIN}\nold\n{END}\n\nAfter.\n')
    study = dict(_study(), claims=[EFFECT], name='demo')
    runs = [_run('bn', 4, s, 'finished', 50 + s) for s in range(3)]
    runs += [_run('dnb', 4, s, 'finished', 70 + s) for s in range(3)]
    study_dir = tmp_path / 'study'
    study_dir.mkdir()
    write_claims_page(dict(study=study, runs=runs), str(study_dir), str(page))
    text = page.read_text()
    assert text.startswith('# Title\n\nProse.\n\n')
    assert text.endswith(f'{END}\n\nAfter.\n')
    assert 'old' not in text
    assert '| DN-B beats BN at batch 4 | DN Table 3 | +20.0 [' in text
    assert '| confirmed |' in text
    assert '(../study/table.md)' in text


def test_cells_table_in_spec_order_with_final_mean_and_std(tmp_path):
    """The cells table used to list cells alphabetically (DN-C before
    BN's batch 8) without their final metric."""
    study = dict(_study(), norms=dict(dnc='DN-C', bn='BN'))
    runs = [_run('bn', 8, s, 'finished', 40 + 2 * s) for s in range(3)]
    runs += [_run('bn', 32, 0, 'finished', 60), _run('bn', 32, 1, 'pending')]
    runs += [_run('dnc', 32, s, 'diverged') for s in range(2)]
    runs.append(_run('dnc', 32, 2, 'collapsed', 21.0))
    page = tmp_path / 'claims.md'
    write_claims_page(dict(study=study, runs=runs), str(tmp_path), str(page))
    rows = [
        line
        for line in page.read_text().splitlines()
        if line.startswith(('| BN |', '| DN-C |'))
    ]
    assert rows == [
        '| DN-C | 32 | 1 | 3 of 3 | 21.0 | - |',
        '| BN | 32 | 1 | 1 of 2 | 60.0 | - |',
        '| BN | 8 | 1 | 3 of 3 | 42.0 +- 2.0 | - |',
    ]


@pytest.mark.parametrize(
    'folder',
    sorted(
        p.parent.name for p in (REPO / 'docs/studies').glob('*/results.json')
    ),
)
def test_committed_tables_regenerate_byte_for_byte(folder):
    """The committed table.md is what the report writes from the committed
    results.json."""
    root = REPO / 'docs/studies' / folder
    results = json.loads((root / 'results.json').read_text())
    assert (
        table_markdown(results['study'], results['runs'])
        == (root / 'table.md').read_text()
    )

"""dn_mmdet.analysis.study's report of a study: the table (tables.py),
the plots (plots.py) and write_report (report.py), from run records (the
study's runs themselves are tested in tests/test_tools/test_norm_study.py).
"""

from pathlib import Path

import pytest

from dn_mmdet.analysis.study.plots import mean_curve, plateau
from dn_mmdet.analysis.study.report import write_report
from dn_mmdet.analysis.study.tables import aggregate, table_markdown


def _record(norm, batch, mult, seed, status, final=None, curve=None):
    return dict(
        norm=norm,
        batch_size=batch,
        lr_mult=mult,
        seed=seed,
        status=status,
        final=final,
        best=None if final is None else max(curve.values()),
        curve={str(k): v for k, v in (curve or {}).items()},
        wall_s=60.0,
    )


def _study_summary():
    return dict(
        name='demo',
        base_config='base.py',
        max_epochs=2,
        base_lr=0.005,
        metric='coco/bbox_mAP',
        metric_scale=100,
        metric_label='bbox mAP (%)',
        collapse_below=0.01,
        lr_scaling='none',
        grid='axes',
        reference=dict(batch_size=16, lr_mult=1.0),
        norms=dict(bn='BN', dnb='DN-B'),
        batch_sizes=[16, 2],
        lr_mults=[1.0, 2.5],
        seeds=[0, 1, 2],
    )


def _records():
    records = []
    for seed, (a, b) in enumerate([(0.30, 0.20), (0.32, 0.22), (0.34, 0.24)]):
        records += [
            _record('bn', 16, 1.0, seed, 'finished', a, {1: a / 2, 2: a}),
            _record('dnb', 16, 1.0, seed, 'finished', b, {1: b, 2: b}),
            _record('dnb', 2, 1.0, seed, 'finished', b, {1: b, 2: b}),
            _record('bn', 16, 2.5, seed, 'finished', a, {1: a, 2: a}),
            _record('dnb', 16, 2.5, seed, 'finished', b, {1: b, 2: b}),
        ]
        # BN at batch 2: one run collapses, two produce NaN.
        records.append(
            _record('bn', 2, 1.0, seed, 'collapsed', 0.004, {1: 0.004})
            if seed == 0
            else _record('bn', 2, 1.0, seed, 'diverged', None, {})
        )
    return records


def test_aggregate_pools_the_seeds():
    cells = aggregate(_records())
    bn = cells[('bn', 16, 1.0)]
    assert bn['final'][0] == pytest.approx(0.32)
    assert bn['final'][1] == pytest.approx(0.02)  # sample std
    small = cells[('bn', 2, 1.0)]
    assert (small['diverged'], small['collapsed'], small['scored']) == (
        2,
        1,
        1,
    )
    assert small['final'] == (pytest.approx(0.004), None)


def test_write_report_writes_the_table_and_plots(tmp_path):
    study, records = _study_summary(), _records()
    written = write_report(study, records, str(tmp_path))
    names = sorted(Path(p).name for p in written)
    assert names == [
        'metric_vs_batch.png',
        'metric_vs_epoch.png',
        'metric_vs_lr.png',
        'table.md',
    ]
    table = (tmp_path / 'table.md').read_text()
    matrix_bn = next(
        line for line in table.splitlines() if line.startswith('| BN | 32.0')
    )
    assert matrix_bn == '| BN | 32.0 ± 2.0 | 0.4 †3/3 | 32.0 ± 2.0 |'
    assert '| BN | 2 | 1 | 0.4 | 0.4 | 3/3 (1 collapsed) | 1.0 |' in table
    assert '| DN-B | 2 | 1 | 22.0 ± 2.0 | 22.0 ± 2.0 | 0/3 | 1.0 |' in table
    import matplotlib.image as mpimg

    for name in names[:3]:
        image = mpimg.imread(tmp_path / name)
        assert image.shape[0] > 100 and image.std() > 0


def test_table_marks_all_diverged_cells():
    records = [
        _record('bn', 16, 1.0, 0, 'finished', 0.3, {1: 0.3}),
        _record('bn', 2, 1.0, 0, 'diverged', None, {}),
        _record('bn', 2, 1.0, 1, 'pending'),
    ]
    study = dict(
        _study_summary(), norms=dict(bn='BN'), lr_mults=[1.0], seeds=[0, 1]
    )
    table = table_markdown(study, records)
    assert '| BN | 30.0 | NaN †1/1 (1 to run) |' in table


def test_table_of_a_full_grid():
    study = dict(_study_summary(), grid='full')
    records = _records() + [
        _record('bn', 2, 2.5, s, 'diverged', None, {}) for s in range(3)
    ]
    table = table_markdown(study, records)
    header = next(
        line
        for line in table.splitlines()
        if line.startswith('| normaliser | batch 16')
    )
    assert header.count('batch ') == 4
    assert 'batch 2, lr x2.5' in header
    bn_row = next(
        line for line in table.splitlines() if line.startswith('| BN | 32.0')
    )
    assert bn_row.endswith('| NaN †3/3 |')
    # DN-B has no run at batch 2, lr x2.5: an empty cell.
    dn_row = next(
        line for line in table.splitlines() if line.startswith('| DN-B | 22.0')
    )
    assert dn_row.endswith('|  |')


def test_plateau_and_mean_curve():
    """The plots' baseline (the first normaliser at the reference setting,
    scaled) and per-epoch mean +- std, a non-finite value left out."""
    cells = aggregate(_records())
    assert plateau(_study_summary(), cells) == pytest.approx(32.0)
    assert plateau(_study_summary(), {}) is None
    epochs, means, stds = mean_curve(
        [{1: 0.2, 2: float('nan')}, {1: 0.4, 2: 0.5}]
    )
    assert epochs == [1, 2]
    assert means == pytest.approx([0.3, 0.5])
    assert stds == pytest.approx([0.02**0.5, 0.0])

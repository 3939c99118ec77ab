"""tools/analysis/benchmark_norm.py end to end, at a toy size (the figures
themselves are measured by the tool, not asserted)."""
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_benchmark_prints_table_with_ratios_and_median_over_runs(
        tmp_path, tool_env):
    out = tmp_path / 'bench.json'
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools/analysis/benchmark_norm.py'),
         '--size', '64', '--batch-size', '2', '--threads', '1', '--repeat',
         '1', '--warmup', '0', '--runs', '2', '--keep-freed-memory',
         '--parts', 'layer', 'backbone', '--variants', 'bn', 'dnb-r16-g1',
         '--device', 'cpu', '--out', str(out)],
        capture_output=True, text=True, env=tool_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = ('batch 2, 64x64, device cpu, threads 1, median wall time of 1 '
              '(median of 2 runs), glibc keeps freed memory; DN CPU '
              'inference kernel: in use')
    assert header in proc.stdout
    rows = [line for line in proc.stdout.splitlines()
            if line.startswith(('| layer', '| backbone'))]
    assert [row.split(' | ')[:2] for row in rows] == [
        ['| layer', 'bn'], ['| layer', 'dnb-r16-g1'], ['| backbone', 'bn'],
        ['| backbone', 'dnb-r16-g1']]
    result = json.loads(out.read_text())
    assert len(result['runs']) == 2 * 2 * 2
    by_key = {(r['part'], r['variant']): r for r in result['results']}
    dn = by_key[('backbone', 'dnb-r16-g1')]
    runs = [r for r in result['runs']
            if (r['part'], r['variant']) == ('backbone', 'dnb-r16-g1')]
    # the median of two runs is their mean
    assert dn['infer_ms'] == sum(r['infer_ms'] for r in runs) / 2
    bn_ms = by_key[('backbone', 'bn')]['infer_ms']
    assert f"| {dn['infer_ms']:.1f} | {dn['infer_ms'] / bn_ms:.2f} |" in \
        rows[3]
    assert all(r['train_ms'] > 0 for r in result['runs'])


def test_benchmark_rejects_bad_options(tool_env):
    proc = subprocess.run(
        [sys.executable, str(REPO / 'tools/analysis/benchmark_norm.py'),
         '--runs', '0'], capture_output=True, text=True, env=tool_env)
    assert proc.returncode == 2
    assert '--runs and --repeat must be >= 1' in proc.stderr


def test_reference_variants_build_the_reference_layer(load_tool):
    """The ``-reference`` rows measure the straightforward DN
    (dn_mmdet/norm/reference.py), with the checkpoint names of DN."""
    from mmcv.cnn import build_norm_layer

    from dn_mmdet.norm.reference import DynamicNorm2dReference
    tool = load_tool('analysis/benchmark_norm')
    name, layer = build_norm_layer(tool.norm_cfg_of('dnb-r16-goup-reference'),
                                   32)
    assert name == 'dn' and type(layer) is DynamicNorm2dReference
    assert layer.g == 'oup' and layer.r == 16

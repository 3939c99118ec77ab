"""Exporting the DN SSDLite to ONNX: standard ops, onnxruntime computes
what PyTorch does, and bad input is refused before anything is written."""

import json

import numpy as np
import onnx
import pytest
import torch

from dn_mmdet.deployment import (
    INPUT_NAME,
    MIN_OPSET,
    DetectorForExport,
    all_threads,
    benchmark_latency,
    export_detector,
    load_session,
    machine_state,
    write_latency_json,
)
from dn_mmdet.norm import DynamicNorm2d


def _run(path, image):
    session = load_session(path, threads=1)
    return session.run(None, {INPUT_NAME: image.numpy()})


def _assert_close(onnx_outputs, torch_outputs):
    assert len(onnx_outputs) == len(torch_outputs) == 12
    for got, want in zip(onnx_outputs, torch_outputs):
        assert got.shape == tuple(want.shape)
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_dn_b_exports_as_standard_onnx_ops(dn_onnx, dn_detector):
    graph = onnx.load(dn_onnx['path']).graph
    ops = [node.op_type for node in graph.node]
    domains = {node.domain for node in graph.node}
    assert domains <= {'', 'ai.onnx'}  # no custom op
    assert {'ReduceMean', 'GlobalAveragePool'} & set(ops)
    assert {'Gemm', 'MatMul'} & set(ops)
    assert {'Sigmoid', 'Mul', 'Add', 'Clip', 'Conv'} <= set(ops)
    # Every DN-B layer's SC-Module has its own Sigmoid between its FCs.
    dn_layers = [
        m for m in dn_detector.modules() if isinstance(m, DynamicNorm2d)
    ]
    assert len(dn_layers) > 40
    assert ops.count('Sigmoid') >= len(dn_layers)
    assert [i.name for i in graph.input] == [INPUT_NAME]


@pytest.mark.slow
def test_dn_layers_built_for_the_cpp_op_export_as_composite(
    seeded_detector, shapes_config, tmp_path, monkeypatch
):
    # impl='op' alone refuses a trace (the C++ op is no ONNX op): the
    # export sets every DN layer to its composite for the trace.
    detector = seeded_detector(shapes_config('dn'), impl='op')
    layers = [m for m in detector.modules() if isinstance(m, DynamicNorm2d)]
    picked = []
    for layer in layers:

        def spy(x, real=layer.implementation):
            picked.append((torch.jit.is_tracing(), real(x)))
            return picked[-1][1]

        monkeypatch.setattr(layer, 'implementation', spy)
    path = str(tmp_path / 'op.onnx')
    expected = export_detector(detector, path, (64, 64))
    # PyTorch's outputs come from the C++ op, the graph from the composite.
    n = len(layers)
    assert picked == [(False, 'op')] * n + [(True, 'composite')] * n
    assert [layer.impl for layer in layers] == ['op'] * n
    graph = onnx.load(path).graph
    assert {node.domain for node in graph.node} <= {'', 'ai.onnx'}
    traced = (
        torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        * 255
    )
    _assert_close(_run(path, traced), expected)


def test_onnxruntime_computes_pytorchs_outputs(dn_onnx, dn_detector):
    traced = (
        torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        * 255
    )
    _assert_close(_run(dn_onnx['path'], traced), dn_onnx['expected'])
    # And on another image than the traced one: nothing of the input was
    # frozen into the graph.
    image = (
        torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(1))
        * 255
    )
    with torch.no_grad():
        want = DetectorForExport(dn_detector)(image)
    _assert_close(_run(dn_onnx['path'], image), want)


@pytest.mark.slow
def test_dynamic_batch_is_per_sample(dn_detector, tmp_path):
    path = str(tmp_path / 'dyn.onnx')
    export_detector(dn_detector, path, (96, 64), dynamic_batch=True)
    images = (
        torch.rand(3, 3, 96, 64, generator=torch.Generator().manual_seed(2))
        * 255
    )
    with torch.no_grad():
        want = DetectorForExport(dn_detector)(images)
        single = DetectorForExport(dn_detector)(images[1:2])
    got = _run(path, images)
    _assert_close(got, want)
    # DN-B's affine is per sample: sample 1 alone gives what it gives in
    # the batch.
    for batch_out, alone in zip(got, single):
        np.testing.assert_allclose(
            batch_out[1:2], alone.numpy(), rtol=1e-4, atol=1e-4
        )


def test_normalisation_is_the_data_preprocessors(dn_detector):
    pre = dn_detector.data_preprocessor
    image = (
        torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3))
        * 255
    )
    with torch.no_grad():
        inputs = pre(dict(inputs=[image.clone()], data_samples=None), False)[
            'inputs'
        ]
        want = dn_detector.bbox_head(dn_detector.extract_feat(inputs))
        got = DetectorForExport(dn_detector)(image[None])
    for a, b in zip(got, want[0] + want[1]):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize('opset', [MIN_OPSET - 1, 21, 'x'])
def test_unsupported_opset_writes_nothing(dn_detector, tmp_path, opset):
    path = tmp_path / 'out.onnx'
    with pytest.raises(ValueError, match=f'opset {opset!r} is not'):
        export_detector(dn_detector, str(path), (128, 128), opset=opset)
    assert not path.exists()


def test_training_mode_writes_nothing(dn_detector, tmp_path):
    path = tmp_path / 'out.onnx'
    dn_detector.backbone.train()
    try:
        with pytest.raises(
            ValueError, match=r'^backbone .*training mode.*model\.eval'
        ):
            export_detector(dn_detector, str(path), (128, 128))
    finally:
        dn_detector.eval()
    assert not path.exists()


def test_dn_c_writes_nothing(seeded_detector, shapes_config, tmp_path):
    detector = seeded_detector(shapes_config('dn'), mode='C1')
    path = tmp_path / 'out.onnx'
    with pytest.raises(
        ValueError,
        match=r'^backbone\.stem\.dn: DN-C '
        r"\(mode='C1'\) is not supported",
    ):
        export_detector(detector, str(path), (128, 128))
    assert not path.exists()


def test_batch_statistics_in_eval_write_nothing(
    seeded_detector, shapes_config, tmp_path
):
    detector = seeded_detector(shapes_config('bn'))
    detector.neck.extra_layers[0][0].bn.running_mean = None
    path = tmp_path / 'out.onnx'
    with pytest.raises(
        ValueError,
        match=r'^neck\.extra_layers\.0\.0\.bn '
        r'\(BatchNorm2d\) normalises with the statistics',
    ):
        export_detector(detector, str(path), (128, 128))
    assert not path.exists()


@pytest.mark.slow
def test_latency_rows_and_json(dn_detector, tmp_path):
    # The timings themselves are not asserted (machine load); the ratios
    # are over the last model, here the only one, so exactly 1.
    rows = benchmark_latency(
        {'dn b': dn_detector},
        sizes=[64],
        threads=[1],
        work_dir=str(tmp_path),
        repeats=2,
        warmup=0,
        clock='cpu',
    )
    assert [(r['size'], r['threads'], r['name']) for r in rows] == [
        (64, 1, 'dn b')
    ]
    assert rows[0]['onnxruntime_ratio'] == rows[0]['pytorch_ratio'] == 1
    assert rows[0]['onnxruntime_ms'] > 0 and rows[0]['pytorch_ms'] > 0
    assert [p.name for p in tmp_path.iterdir()] == ['dn_b_64.onnx']
    with pytest.raises(ValueError, match='clock must be one of'):
        benchmark_latency({'dn': dn_detector}, [64], [1], '', clock='gpu')
    path = tmp_path / 'out' / 'latency.json'
    before = machine_state()
    written = write_latency_json(str(path), rows, before, repeats=2)
    assert json.loads(path.read_text()) == written
    assert written['settings'] == {'repeats': 2}
    assert written['rows'] == rows
    assert len(written['machine_after']['load_average']) == 3
    assert written['machine_before']['cpus'] == all_threads() >= 1

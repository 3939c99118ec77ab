"""The deployment tools end to end on a seeded DN-B detector and the tiny
shapes data: export with --verify, evaluate in onnxruntime, compare with
tools/test.py."""

import pickle

import pytest
import torch

from dn_mmdet.deployment import compare_detections


@pytest.fixture(scope='module')
def tools(load_tool):
    return {
        name: load_tool(f'deployment/{name}')
        for name in (
            'pytorch2onnx',
            'test_onnx',
            'compare_results',
            'benchmark_onnx',
        )
    }


@pytest.fixture(scope='module')
def options(shapes_data, shapes_options):
    # Every box evaluated (score_thr 0): a seeded model scores low.
    return shapes_options(shapes_data, seed=0)


@pytest.fixture(scope='module')
def exported(tools, shapes_config, dn_checkpoint, options, tmp_path_factory):
    path = tmp_path_factory.mktemp('export') / 'dnb.onnx'
    report = tools['pytorch2onnx'].main(
        [
            shapes_config('dn'),
            dn_checkpoint,
            '--output-file',
            str(path),
            '--verify',
            '--cfg-options',
            *options,
        ]
    )
    return dict(path=str(path), report=report)


@pytest.mark.slow
def test_export_verifies_on_a_real_image(exported):
    report = exported['report']
    assert report['ok']
    assert report['max_output_diff'] < 1e-3
    (diff,) = report['detections']  # the first test image
    assert diff.count == 10 and diff.unmatched == 0


@pytest.mark.slow
def test_onnxruntime_evaluation_equals_pytorchs(
    tools,
    test_tool,
    exported,
    shapes_config,
    dn_checkpoint,
    options,
    tmp_path,
    capsys,
):
    config = shapes_config('dn')
    torch_out, onnx_out = tmp_path / 'torch.pkl', tmp_path / 'onnx.pkl'
    torch_metrics = test_tool.main(
        [
            config,
            dn_checkpoint,
            '--work-dir',
            str(tmp_path / 'torch'),
            '--out',
            str(torch_out),
            '--cfg-options',
            *options,
        ]
    )
    onnx_metrics = tools['test_onnx'].main(
        [
            config,
            exported['path'],
            '--work-dir',
            str(tmp_path / 'onnx'),
            '--out',
            str(onnx_out),
            '--cfg-options',
            *options,
        ]
    )
    assert 'bbox mAP: ' in capsys.readouterr().out
    assert set(onnx_metrics) == set(torch_metrics)
    assert 'coco/bbox_mAP' in onnx_metrics
    for key, value in torch_metrics.items():
        assert onnx_metrics[key] == pytest.approx(value, abs=1e-3), key
    with open(onnx_out, 'rb') as f:
        onnx_results = pickle.load(f)
    assert len(onnx_results) == 4  # the val images
    # Same detections, image by image, as dumped by both tools.
    assert all(len(r['pred_instances']['scores']) >= 10 for r in onnx_results)
    diffs = tools['compare_results'].main([str(torch_out), str(onnx_out)])
    assert [d.unmatched for d in diffs] == [0, 0, 0, 0]
    assert all(d.count == 10 for d in diffs)


def test_missing_checkpoint_writes_nothing(tools, shapes_config, tmp_path):
    out = tmp_path / 'out.onnx'
    with pytest.raises(
        SystemExit, match=r'Checkpoint file .*missing\.pth does not '
    ):
        tools['pytorch2onnx'].main(
            [
                shapes_config('dn'),
                str(tmp_path / 'missing.pth'),
                '--output-file',
                str(out),
            ]
        )
    assert not out.exists()


def test_a_checkpoint_of_another_model_writes_nothing(
    tools, shapes_config, dn_detector, tmp_path
):
    # mmengine would load the rest and skip the key: a partly random
    # network, exported without a word.
    state = dict(dn_detector.state_dict())
    del state['backbone.stem.dn.sc.fc1.weight']
    checkpoint = tmp_path / 'partial.pth'
    torch.save(dict(state_dict=state), checkpoint)
    out = tmp_path / 'out.onnx'
    with pytest.raises(
        SystemExit,
        match=r'Checkpoint .*partial\.pth does not fit the model of this '
        r'config\.\n  1 missing from the checkpoint: '
        r'backbone\.stem\.dn\.sc\.fc1\.weight',
    ):
        tools['pytorch2onnx'].main(
            [
                shapes_config('dn'),
                str(checkpoint),
                '--output-file',
                str(out),
            ]
        )
    assert not out.exists()


def test_benchmark_onnx_refuses_bad_arguments(
    tools, shapes_config, tmp_path, capsys
):
    configs = [shapes_config('dn'), shapes_config('bn')]
    bad = (
        (['--out', 'latency.txt'], '--out must be a .json file'),
        (['--checkpoints', 'none'], '1 --checkpoints for 2 configs'),
    )
    for extra, message in bad:
        with pytest.raises(SystemExit):
            tools['benchmark_onnx'].main([*configs, *extra])
        assert message in capsys.readouterr().err
    missing = str(tmp_path / 'missing.pth')
    with pytest.raises(SystemExit, match=r'Checkpoint file .*missing\.pth'):
        tools['benchmark_onnx'].main(
            [*configs, '--checkpoints', missing, 'none']
        )


def test_test_onnx_names_a_missing_model(tools, shapes_config, tmp_path):
    with pytest.raises(SystemExit, match=r'ONNX model .*none\.onnx does '):
        tools['test_onnx'].main(
            [shapes_config('dn'), str(tmp_path / 'none.onnx')]
        )


def _result(img_id, scores, boxes, labels):
    return dict(
        img_id=img_id,
        pred_instances=dict(
            scores=torch.tensor(scores),
            bboxes=torch.tensor(boxes),
            labels=torch.tensor(labels),
        ),
    )


def test_compare_detections_matches_ties_and_finds_differences():
    boxes = [
        [0.0, 0.0, 10.0, 10.0],
        [5.0, 5.0, 20.0, 20.0],
        [1.0, 2.0, 3.0, 4.0],
    ]
    reference = [_result(1, [0.9, 0.5, 0.5], boxes, [0, 1, 2])]
    # Equal scores in the other order: matched.
    swapped = [
        _result(1, [0.9, 0.5, 0.5], [boxes[0], boxes[2], boxes[1]], [0, 2, 1])
    ]
    (diff,) = compare_detections(reference, swapped)
    assert diff == (3, 0.0, 0.0, 0)
    # A score 2e-3 off, a box 2e-3 px off, a label changed: each unmatched
    # in both directions.
    for scores, bxs, labels in (
        ([0.9, 0.502, 0.5], boxes, [0, 1, 2]),
        (
            [0.9, 0.5, 0.5],
            [boxes[0], [5.0, 5.0, 20.002, 20.0], boxes[2]],
            [0, 1, 2],
        ),
        ([0.9, 0.5, 0.5], boxes, [0, 3, 2]),
    ):
        (diff,) = compare_detections(
            reference, [_result(1, scores, bxs, labels)]
        )
        assert diff.unmatched == 2
    # Within tolerance: matched, the difference reported.
    (diff,) = compare_detections(
        reference, [_result(1, [0.9, 0.5005, 0.5], boxes, [0, 1, 2])]
    )
    assert diff.unmatched == 0 and diff.score == pytest.approx(5e-4, abs=1e-6)
    with pytest.raises(ValueError, match='image 1 in the reference but 2'):
        compare_detections(reference, [_result(2, [0.9], boxes[:1], [0])])

"""torchvision (needed by mmpretrain) imports beside the CPU build of torch."""
import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=300)


def test_mmdet_and_mmpretrain_models_import_after_dn_mmdet():
    result = _run("""
        import dn_mmdet
        import mmdet.models, mmpretrain.models, torchvision
        from torchvision.transforms import functional
        from dn_mmdet.utils import torchvision_compat
        print(torchvision_compat._library is not None)
        """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ('True', 'False')


def test_declared_ops_fail_with_torchvisions_own_error():
    """Where the extension cannot load (the registries' CUDA build beside CPU
    torch), the declared NMS op has no kernel: calling it raises
    torchvision's error instead of running anything."""
    result = _run("""
        import torch
        import dn_mmdet
        from dn_mmdet.utils import torchvision_compat
        import torchvision
        if torchvision_compat._library is None:
            assert torchvision.extension._has_ops()
            print('extension works')
        else:
            assert not torchvision.extension._has_ops()
            try:
                torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
            except RuntimeError as err:
                print('refused:', str(err).splitlines()[0])
        """)
    assert result.returncode == 0, result.stderr
    out = result.stdout.strip()
    assert out == 'extension works' or out.startswith(
        "refused: Couldn't load custom C++ ops"), out

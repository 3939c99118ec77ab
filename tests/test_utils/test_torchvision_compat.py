"""torchvision (needed by mmpretrain) imports beside the CPU build of torch.

Both checks run in one fresh process (importing torch, mmdet and mmpretrain
costs seconds a process), in the order of the tests below, each printing
one JSON line: its output, or the traceback that ended it."""

import json
import subprocess
import sys
import textwrap

import pytest

_CHECKS = '''
import json, traceback

def check(name, code):
    out = []
    try:
        exec(code, dict(out=out.append))
        record = dict(name=name, out=out, error=None)
    except BaseException:
        record = dict(name=name, out=out, error=traceback.format_exc())
    print(json.dumps(record), flush=True)

check('models_import', """
import dn_mmdet
import mmdet.models, mmpretrain.models, torchvision
from torchvision.transforms import functional
from dn_mmdet.utils import torchvision_compat
out(str(torchvision_compat._library is not None))
""")

check('declared_ops', """
import torch
import dn_mmdet
from dn_mmdet.utils import torchvision_compat
import torchvision
if torchvision_compat._library is None:
    assert torchvision.extension._has_ops()
    out('extension works')
else:
    assert not torchvision.extension._has_ops()
    try:
        torchvision.ops.nms(torch.rand(3, 4), torch.rand(3), 0.5)
    except RuntimeError as err:
        out('refused: ' + str(err).splitlines()[0])
""")
'''


@pytest.fixture(scope='module')
def checks():
    """{check name: (printed lines, traceback or None)}, and the stderr."""
    proc = subprocess.run(
        [sys.executable, '-c', textwrap.dedent(_CHECKS)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    records = {}
    for line in proc.stdout.splitlines():
        if line.startswith('{"name": '):
            record = json.loads(line)
            records[record['name']] = (record['out'], record['error'])
    return records, f'exit status {proc.returncode}\n{proc.stderr[-3000:]}'


@pytest.mark.slow
def test_mmdet_and_mmpretrain_models_import_after_dn_mmdet(checks):
    records, stderr = checks
    assert 'models_import' in records, stderr
    out, error = records['models_import']
    assert error is None, error
    assert out in (['True'], ['False'])


def test_declared_ops_fail_with_torchvisions_own_error(checks):
    """Where the extension cannot load (the registries' CUDA build beside CPU
    torch), the declared NMS op has no kernel: calling it raises
    torchvision's error instead of running anything."""
    records, stderr = checks
    assert 'declared_ops' in records, stderr
    out, error = records['declared_ops']
    assert error is None, error
    assert len(out) == 1, out
    assert out[0] == 'extension works' or out[0].startswith(
        "refused: Couldn't load custom C++ ops"
    ), out

"""DN's compiled kernel: which build is loaded, and that building it never
hangs or collides. Real builds in real processes, in copies of the package,
so that a build this checkout may hold does not stand in for the one under
test: the kernel itself where the test is about the kernel's build (a C++
compile of about 40 s of one core), a small extension through the same
loader where it is about the loader. The timeouts only catch a hang: a busy
machine may take minutes to compile."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dn_mmdet.ops.ext_loader import ExtensionSpec

REPO = Path(__file__).resolve().parents[2]
SOURCE = 'csrc/dn_cpu.cpp'


def load_code(extension: str) -> str:
    """Code that loads ``extension`` (an expression over ``dn_mmdet.ops``)
    and prints where it came from and which files it used."""
    return (
        'import torch, dn_mmdet; from dn_mmdet import ops; '
        f'ext = {extension}; assert ext.load(), ext.error; '
        'print(ext.origin, dn_mmdet.__file__, ext.library)'
    )


LOAD = load_code('ops.dn_cpu')
# A small extension for the loader's build path: what the loader does (the
# name, the lock, the private directory, the cache) does not depend on what
# it compiles, and this compiles in seconds where the kernel takes ~40 s.
TINY = 'csrc/tiny.cpp'
TINY_SOURCE = """#include <torch/library.h>
int64_t answer() { return 42; }
TORCH_LIBRARY(dn_mmdet_tiny, m) { m.def("answer() -> int", &answer); }
"""
LOAD_TINY = (
    load_code(f'ops.CompiledExtension("tiny", "{TINY}", "a test extension")')
    + '; assert torch.ops.dn_mmdet_tiny.answer() == 42'
)


def copy_checkout(dst: Path) -> Path:
    """The package and what setup.py reads, without built extensions, and
    with the small extension TINY beside the kernel's source."""
    ignore = shutil.ignore_patterns('__pycache__', '*.so', 'build')
    shutil.copytree(REPO / 'dn_mmdet', dst / 'dn_mmdet', ignore=ignore)
    shutil.copytree(REPO / 'requirements', dst / 'requirements')
    for name in ('setup.py', 'README.md'):
        shutil.copy(REPO / name, dst / name)
    (dst / 'dn_mmdet' / 'ops' / TINY).write_text(TINY_SOURCE)
    return dst


def python(code: str, checkout: Path, extensions: Path, timeout=600, **popen):
    path = [str(checkout)] + os.environ.get('PYTHONPATH', '').split(os.pathsep)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(p for p in path if p),
        TORCH_EXTENSIONS_DIR=str(extensions),
    )
    command = [sys.executable, '-c', code]
    if popen:
        return subprocess.Popen(command, env=env, cwd=checkout, **popen)
    return subprocess.run(
        command,
        env=env,
        cwd=checkout,
        timeout=timeout,
        capture_output=True,
        text=True,
    )


def test_build_name_follows_what_the_binary_depends_on(tmp_path, monkeypatch):
    base = ExtensionSpec('dn_cpu', SOURCE)
    text = Path(base.source).read_text()
    elsewhere = tmp_path / 'other_checkout' / 'dn_cpu.cpp'
    elsewhere.parent.mkdir()
    elsewhere.write_text(text)
    edited = tmp_path / 'edited.cpp'
    edited.write_text(text + '\n// edited\n')
    # the same source at another path (another checkout) shares the build
    assert ExtensionSpec('dn_cpu', str(elsewhere)).name == base.name
    assert ExtensionSpec('dn_cpu', str(edited)).name != base.name
    other_isa = 'default' if base.isa == 'avx2' else 'avx2'
    assert base.name.startswith(f'_dn_cpu_{base.isa}_')
    assert ExtensionSpec('dn_cpu', SOURCE, isa=other_isa).name != base.name
    monkeypatch.setattr(torch, '__version__', '0.0.1')
    assert ExtensionSpec('dn_cpu', SOURCE).name != base.name


@pytest.mark.slow
def test_killed_build_never_blocks_later_runs(tmp_path):
    """SIGKILL a process (and its compiler) while it builds an extension;
    the next process builds it within the timeout (torch's own build lock,
    left behind by such a kill, made every later run wait forever). A
    second checkout then loads that build without compiling. (The small
    extension TINY, through the loader the kernel uses.)"""
    extensions = tmp_path / 'torch_extensions'
    root = extensions / 'dn_mmdet'
    first = copy_checkout(tmp_path / 'first')
    builder = python(
        LOAD_TINY,
        first,
        extensions,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 600
    # torch writes build.ninja, then runs ninja and the compiler
    while not list(root.glob('.*/build.ninja')):
        assert builder.poll() is None, builder.communicate()
        assert time.monotonic() < deadline, 'the build did not start'
        time.sleep(0.2)
    time.sleep(1)
    os.killpg(builder.pid, signal.SIGKILL)
    builder.wait()
    assert list(root.glob('.*/build.ninja'))  # the dead build's leftovers

    proc = python(LOAD_TINY, first, extensions, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin, _, module_file = proc.stdout.split()[-3:]
    assert origin == 'compiled'
    assert not list(root.glob('.*')), 'the dead build was not cleaned up'
    spec = ExtensionSpec('tiny', str(first / 'dn_mmdet' / 'ops' / TINY))
    assert Path(module_file).parent.parent == root
    assert (root / spec.name).is_dir()

    second = copy_checkout(tmp_path / 'second')
    proc = python(LOAD_TINY, second, extensions, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin, package, module_file = proc.stdout.split()[-3:]
    assert package.startswith(str(second))
    assert (origin, Path(module_file).parent) == ('cache', root / spec.name)
    assert 'building' not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_install_time_build_is_loaded_and_guarded(tmp_path):
    """``setup.py`` compiles the kernel as mmcv compiles its ops; the run
    time loads that build (nothing is compiled then), and would not load it
    under another torch or on a CPU without the build's instruction set.

    The build is the one the project's install made in this checkout
    (``pip install -e .`` runs ``build_ext --inplace``), copied; only a
    checkout installed without it (``DN_MMDET_WITH_OPS=0``) builds here."""
    checkout = copy_checkout(tmp_path / 'checkout')
    spec = ExtensionSpec('dn_cpu', SOURCE)
    installed = list((REPO / 'dn_mmdet' / 'ops').glob(f'{spec.name}.*.so'))
    if installed:
        shutil.copy(installed[0], checkout / 'dn_mmdet' / 'ops')
    else:
        proc = subprocess.run(
            [sys.executable, 'setup.py', 'build_ext', '--inplace'],
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    built = list((checkout / 'dn_mmdet' / 'ops').glob('_dn_cpu_*.so'))
    assert len(built) == 1 and built[0].name.startswith(spec.name + '.')
    extensions = tmp_path / 'torch_extensions'
    code = (
        LOAD
        + """
import importlib.util, torch
from dn_mmdet.ops.ext_loader import ExtensionSpec
def installed(spec):
    return importlib.util.find_spec('dn_mmdet.ops.' + spec.name) is not None
spec = ExtensionSpec('dn_cpu', 'csrc/dn_cpu.cpp')
other_isa = 'default' if spec.isa == 'avx2' else 'avx2'
assert not installed(ExtensionSpec('dn_cpu', 'csrc/dn_cpu.cpp', other_isa))
torch.__version__ = '0.0.1'
assert not installed(ExtensionSpec('dn_cpu', 'csrc/dn_cpu.cpp'))
"""
    )
    proc = python(code, checkout, extensions, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    origin, _, module_file = proc.stdout.split()[-3:]
    assert (origin, Path(module_file)) == ('installed', built[0])
    assert not extensions.exists()

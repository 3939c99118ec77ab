"""Install dn_mmdet: ``pip install --no-build-isolation -e .`` (README has the
full stack).

With torch importable (``--no-build-isolation`` lets the build see the
installed torch, as mmcv's build does), DN's CPU kernel
(``dn_mmdet/ops/csrc``) is compiled now, as mmcv compiles its ops; without
torch, or with ``DN_MMDET_WITH_OPS=0``, it is compiled on first use instead.
"""

import importlib.util
import os
import os.path as osp

from setuptools import find_packages, setup

HERE = osp.dirname(osp.abspath(__file__))


def read_version():
    scope = {}
    with open(osp.join(HERE, 'dn_mmdet', 'version.py')) as f:
        exec(f.read(), scope)
    return scope['__version__']


def parse_requirements(fname):
    """Requirement lines of ``requirements/<fname>``, comments dropped."""
    with open(osp.join(HERE, 'requirements', fname)) as f:
        lines = (line.split('#', 1)[0].strip() for line in f)
        return [line for line in lines if line and not line.startswith('-')]


def compiled_ops():
    """``setup()`` arguments that build DN's CPU kernel, or none.

    The extension is named as the run-time loader looks it up
    (``dn_mmdet/ops/ext_loader.py``: a hash of the source, flags, Python,
    torch version and instruction set), so it is loaded only by the torch
    and CPUs it was built for; elsewhere DN compiles its own on first use.
    """
    if os.environ.get('DN_MMDET_WITH_OPS', '1') == '0':
        return {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension
    except ImportError:
        return {}
    spec = importlib.util.spec_from_file_location(
        'dn_mmdet_ext_loader',
        osp.join(HERE, 'dn_mmdet', 'ops', 'ext_loader.py'),
    )
    ext_loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ext_loader)
    dn_cpu = ext_loader.ExtensionSpec('dn_cpu', 'csrc/dn_cpu.cpp')
    extension = CppExtension(
        name=f'dn_mmdet.ops.{dn_cpu.name}',
        sources=[osp.relpath(dn_cpu.source, HERE)],
        extra_compile_args=dn_cpu.cflags,
        extra_link_args=dn_cpu.ldflags,
    )
    return dict(
        ext_modules=[extension], cmdclass={'build_ext': BuildExtension}
    )


setup(
    name='dn_mmdet',
    version=read_version(),
    description='Dynamic Normalization (DN) for MMDetection 3.x',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dn_mmdet', 'dn_mmdet.*']),
    # The C++ source: the run-time loader hashes it, and compiles it when
    # no installed build fits.
    package_data={'dn_mmdet.ops': ['csrc/*.cpp']},
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime.txt')
    + parse_requirements('mminstall.txt'),
    extras_require={
        'tests': parse_requirements('tests.txt'),
        'deploy': parse_requirements('deploy.txt'),
    },
    license='Apache License 2.0',
    zip_safe=False,
    **compiled_ops(),
)

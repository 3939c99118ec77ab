"""Install dn_mmdet: ``pip install -e .`` (see README for the full stack)."""
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


setup(
    name='dn_mmdet',
    version=read_version(),
    description='Dynamic Normalization (DN) for MMDetection 3.x',
    long_description=open(osp.join(HERE, 'README.md')).read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['dn_mmdet', 'dn_mmdet.*']),
    # The C++ source of DN's CPU inference kernel, compiled on first use.
    package_data={'dn_mmdet.norm': ['csrc/*.cpp']},
    python_requires='>=3.8',
    install_requires=parse_requirements('runtime.txt') +
    parse_requirements('mminstall.txt'),
    extras_require={'tests': parse_requirements('tests.txt')},
    license='Apache License 2.0',
    zip_safe=False,
)

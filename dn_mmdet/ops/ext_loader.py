"""Find, build and load the C++ extensions of :mod:`dn_mmdet.ops`.

An extension is looked up in this order:

1. built when the package was installed (``setup.py`` compiles it with
   ``torch.utils.cpp_extension``, as mmcv builds its ops): the module
   ``dn_mmdet.ops.<name>`` next to this file;
2. built earlier on this machine: ``<root>/dn_mmdet/<name>/``, where
   ``<root>`` is ``$TORCH_EXTENSIONS_DIR``, else torch's default
   (``~/.cache/torch_extensions``);
3. compiled now into that cache (about 40 s of one core, logged).

``<name>`` holds the extension's name, the instruction set it is compiled
for and a hash of everything the binary depends on: the source text, the
compiler flags, Python's extension ABI, torch's version and C++ ABI
(:class:`ExtensionSpec`). A build is therefore only found by the Python,
torch and CPU it was made for (an install-time build for another torch, or an
AVX2 build on a CPU without AVX2, is not found, and the cache is used
instead); two checkouts or environments with the same source and torch share
one build; different sources never overwrite each other's build.

A build into the cache runs in a private temporary directory, under an
``flock`` that the OS releases when its holder dies, and is renamed into
place only when complete. A builder killed midway (SIGKILL, a scheduler's
timeout) leaves a temporary directory that the next builder removes; it
never blocks later runs. (``cpp_extension.load`` alone guards its build
directory with a lock *file*: a killed build leaves it behind, and every
later load of that directory waits for it forever.)

This module imports only the standard library and torch, so that
``setup.py`` can load it before the package's dependencies are installed.
"""

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import os.path as osp
import shutil
import sysconfig
import tempfile
import warnings
from typing import Optional

import torch

try:
    import fcntl
except ImportError:  # Windows: builds are not guarded against each other
    fcntl = None

__all__ = ['ExtensionSpec', 'CompiledExtension', 'cpu_isa']

HERE = osp.dirname(osp.abspath(__file__))
# Written into a cache build when it is complete: which library file to load
# (cpp_extension names it ``<name>_v1`` if one process builds a name twice).
_MANIFEST = 'extension.json'


def cpu_isa() -> str:
    """``'avx2'`` where the CPU has AVX2 and FMA (AVX-512 CPUs too: DN's
    passes are memory-bound, wider vectors gain nothing), else
    ``'default'``."""
    capability = torch.backends.cpu.get_cpu_capability()
    return 'avx2' if capability in ('AVX2', 'AVX512') else 'default'


class ExtensionSpec:
    """What one build of an extension is: source, flags and the name that
    identifies it.

    Args:
        base_name (str): e.g. ``'dn_cpu'``.
        source (str): The C++ file, relative to this directory.
        isa (str, optional): ``'avx2'`` or ``'default'``; the running CPU's
            (:func:`cpu_isa`) if not given.
    """

    def __init__(
        self, base_name: str, source: str, isa: Optional[str] = None
    ) -> None:
        self.source = osp.join(HERE, source)
        self.isa = isa or cpu_isa()
        self.cflags = ['-O3', '-fopenmp']
        if self.isa == 'avx2':
            self.cflags += ['-mavx2', '-mfma']
        # Resolves to the libgomp torch has loaded: one OpenMP thread pool.
        self.ldflags = ['-fopenmp']
        self.name = f'_{base_name}_{self.isa}_{self.build_key()}'

    def build_key(self) -> str:
        """Hash of the source text, the flags, Python's extension ABI and
        torch's version and C++ ABI: equal keys, interchangeable binaries."""
        digest = hashlib.sha256()
        with open(self.source, 'rb') as f:
            digest.update(f.read())
        for part in (
            self.cflags,
            self.ldflags,
            sysconfig.get_config_var('EXT_SUFFIX'),
            torch.__version__,
            torch.version.git_version,
            torch._C._GLIBCXX_USE_CXX11_ABI,
        ):
            digest.update(repr(part).encode())
        return digest.hexdigest()[:12]


class CompiledExtension:
    """A C++ extension of :mod:`dn_mmdet.ops`, loaded on first use.

    :meth:`load` finds or builds it once per process and loads it, which
    registers its ops; afterwards :attr:`library` is its file and
    :attr:`origin` says where it came from. A failure (no C++ compiler,
    say) warns once and is remembered in :attr:`error`: the callers then
    use ATen's kernels.

    Args:
        base_name (str): e.g. ``'dn_cpu'``.
        source (str): The C++ file, relative to this directory.
        description (str): For messages, e.g. ``'the DN CPU kernel'``.
    """

    def __init__(self, base_name: str, source: str, description: str):
        self.base_name = base_name
        self.source = source
        self.description = description
        #: The loaded shared library's path.
        self.library: Optional[str] = None
        #: ``'installed'``, ``'cache'`` or ``'compiled'`` once loaded.
        self.origin: Optional[str] = None
        self.error: Optional[str] = None

    def load(self) -> bool:
        """Find or build the extension now; True if it is available."""
        if self.library is None and self.error is None:
            try:
                self.library, self.origin = self._find_or_build()
            except Exception as error:  # noqa: BLE001  (any failure: ATen)
                self.error = f'{type(error).__name__}: {error}'
                warnings.warn(
                    f'dn_mmdet: could not build {self.description}, using '
                    f'ATen kernels instead ({self.error.splitlines()[0]}). '
                    "Build DN layers with impl='composite' to skip trying.",
                    stacklevel=2,
                )
        return self.library is not None

    def _find_or_build(self):
        spec = ExtensionSpec(self.base_name, self.source)
        installed = importlib.util.find_spec(f'{__package__}.{spec.name}')
        if installed is not None:
            torch.ops.load_library(installed.origin)
            return installed.origin, 'installed'
        from torch.utils import cpp_extension

        root = osp.join(
            os.environ.get('TORCH_EXTENSIONS_DIR')
            or cpp_extension.get_default_build_root(),
            'dn_mmdet',
        )
        return build_in_cache(spec, root, self.description)


def build_in_cache(spec: ExtensionSpec, root: str, description: str):
    """Load ``spec``'s build from ``<root>/<name>``, building it first if
    it is not there. Returns ``(library path, 'cache' or 'compiled')``."""
    target = osp.join(root, spec.name)
    if osp.isdir(target):
        with contextlib.suppress(ImportError, OSError, ValueError, KeyError):
            return _import_build(target), 'cache'
    os.makedirs(root, exist_ok=True)
    with _exclusive_lock(osp.join(root, f'{spec.name}.lock'), description):
        if osp.isdir(target):  # built while we waited, or unloadable
            try:
                return _import_build(target), 'cache'
            except (ImportError, OSError, ValueError, KeyError):
                shutil.rmtree(target)
        # Holding the lock, any temporary build of this name is a dead
        # builder's.
        for stale in glob.glob(osp.join(root, f'.{spec.name}.*')):
            shutil.rmtree(stale, ignore_errors=True)
        from mmengine.logging import print_log

        print_log(
            f'dn_mmdet: building {description} (once per machine, source '
            f'and torch version; ~40 s) into {target}',
            logger='current',
        )
        building = tempfile.mkdtemp(prefix=f'.{spec.name}.', dir=root)
        try:
            from torch.utils import cpp_extension

            # Loads the library too (torch.ops.load_library).
            library = cpp_extension.load(
                name=spec.name,
                sources=[spec.source],
                build_directory=building,
                extra_cflags=spec.cflags,
                extra_ldflags=spec.ldflags,
                is_python_module=False,
                verbose=False,
            )
            with open(osp.join(building, _MANIFEST), 'w') as f:
                json.dump(dict(file=osp.basename(library)), f)
            os.rename(building, target)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    return osp.join(target, osp.basename(library)), 'compiled'


def _import_build(directory: str) -> str:
    """Load the library a complete build in ``directory`` holds; its path."""
    with open(osp.join(directory, _MANIFEST)) as f:
        library = osp.join(directory, json.load(f)['file'])
    torch.ops.load_library(library)
    return library


@contextlib.contextmanager
def _exclusive_lock(path: str, description: str):
    """Hold an exclusive ``flock`` on ``path``. The OS drops it when the
    holder exits or is killed, so a dead builder never blocks the next."""
    with open(path, 'a') as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                from mmengine.logging import print_log

                print_log(
                    f'dn_mmdet: waiting for another process that is '
                    f'building {description} ({path})',
                    logger='current',
                )
                fcntl.flock(f, fcntl.LOCK_EX)
        yield

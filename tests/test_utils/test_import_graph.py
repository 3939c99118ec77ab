"""The package's import graph, read from the source with ``ast``: no module
of dn_mmdet imports itself back through a chain of imports.

An edge ``a -> b`` is an import of dn_mmdet module ``b`` that runs when
``a`` is imported: any import statement outside a function body (module
level, under ``if``/``try``, in a class body). Imports inside functions run
later and cannot make a circle at import time. ``from p import n`` is an
edge to ``p.n`` when that is a module, else to ``p``.
"""

import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

from helpers import REPO

PACKAGE = 'dn_mmdet'


def package_modules(root: Path) -> Dict[str, Path]:
    """Every module of the package under ``root``, by dotted name
    (a package by its own name, for its ``__init__.py``)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob('*.py')):
        parts = list(path.relative_to(root).with_suffix('').parts)
        if parts[-1] == '__init__':
            parts.pop()
        modules['.'.join(parts)] = path
    return modules


def _module_level_imports(tree: ast.AST):
    """Import nodes that execute when the module is imported."""
    stack = list(ast.iter_child_nodes(tree))
    while stack:
        node = stack.pop()
        if isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        ):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _resolve(name: str, path: Path, node: ast.ImportFrom) -> Optional[str]:
    """Absolute name of ``from <node.module> import ...`` in module
    ``name`` (whose file is ``path``)."""
    if node.level == 0:
        return node.module
    package = name.split('.')
    if path.name != '__init__.py':
        package.pop()  # a module's relative imports start at its package
    if node.level > 1:
        package = package[: -(node.level - 1)]
    return '.'.join(package + ([node.module] if node.module else []))


def import_graph(root: Path) -> Dict[str, Set[str]]:
    """``{module: {dn_mmdet modules it imports at import time}}``."""
    modules = package_modules(root)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in _module_level_imports(tree):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = _resolve(name, path, node)
            for alias in node.names:
                sub = f'{base}.{alias.name}'
                targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One circle ``[a, b, ..., a]`` of ``graph``, or None (depth-first
    search; a node on the current path reached again closes a circle)."""
    done: Set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path, branches = [start], [iter(sorted(graph[start]))]
        while branches:
            nxt = next(branches[-1], None)
            if nxt is None:  # every import of path[-1] explored
                done.add(path.pop())
                branches.pop()
            elif nxt in path:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in done:
                path.append(nxt)
                branches.append(iter(sorted(graph[nxt])))
    return None


def test_package_has_no_import_cycle():
    graph = import_graph(REPO)
    # The graph is the package's: a parse that found no edges would pass.
    assert 'dn_mmdet.norm.dynamic_norm' in graph['dn_mmdet.norm']
    assert find_cycle(graph) is None, ' -> '.join(find_cycle(graph))


def test_find_cycle_reports_the_circle(tmp_path):
    """The checker itself finds a circle written through relative and
    absolute imports, one of them under ``try``; and not one through an
    import inside a function."""
    pkg = tmp_path / PACKAGE
    (pkg / 'sub').mkdir(parents=True)
    (pkg / '__init__.py').write_text('from .a import A\n')
    (pkg / 'a.py').write_text('from .sub import b\nA = 1\n')
    (pkg / 'sub' / '__init__.py').write_text('')
    (pkg / 'sub' / 'b.py').write_text(
        'try:\n    from dn_mmdet.c import C\nexcept ImportError:\n    pass\n'
    )
    (pkg / 'c.py').write_text('def f():\n    from dn_mmdet import a\nC = 2\n')
    graph = import_graph(tmp_path)
    assert graph['dn_mmdet.a'] == {'dn_mmdet.sub.b'}
    assert find_cycle(graph) is None

    (pkg / 'c.py').write_text('from . import a\n')
    assert find_cycle(import_graph(tmp_path)) == [
        'dn_mmdet.a',
        'dn_mmdet.sub.b',
        'dn_mmdet.c',
        'dn_mmdet.a',
    ]

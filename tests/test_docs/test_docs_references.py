"""What the docs name exists: every repository path, config and tool in the
README, the guides (docs/en) and the config folders' READMEs, every relative
link of the pages mkdocs does not build, every config a metafile lists, and
every ``--flag`` a documented ``tools/...`` command passes is one its tool
accepts (read from the tool's own ``--help``)."""

import itertools
import re
import shlex
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
GUIDES = sorted((REPO / 'docs' / 'en').glob('*.md'))
CONFIG_READMES = sorted((REPO / 'configs').glob('*/README.md'))
PAGES = [REPO / 'README.md'] + GUIDES + CONFIG_READMES
METAFILES = sorted((REPO / 'configs').glob('*/metafile.yml'))

# A repository path: one of these top folders, then path characters
# (brace lists and globs included). Not preceded by a path character, so
# that `~/.cache/torch_extensions/dn_mmdet` or `work_dirs/...` do not count.
PATH_RE = re.compile(
    r'(?<![\w/.$-])((?:configs|tools|dn_mmdet|tests|docs|requirements)'
    r'/[\w.{},*/-]*[\w*}/])'
)
FENCE_RE = re.compile(r'^```[^\n]*\n(.*?)^```', re.S | re.M)
INLINE_RE = re.compile(r'(?<!`)`([^`\n]+)`(?!`)')
LINK_RE = re.compile(r'\]\(([^)\s]+)\)')
# Shell scripts that pass their extra arguments to a python tool.
PASSES_FLAGS_TO = {
    'tools/dist_train.sh': 'tools/train.py',
    'tools/dist_test.sh': 'tools/test.py',
}


def expand_braces(text):
    """``a{b,c}d`` -> ``['abd', 'acd']`` (nested lists are not used)."""
    parts = re.split(r'\{([^{}]*)\}', text)
    choices = [
        [p] if i % 2 == 0 else p.split(',') for i, p in enumerate(parts)
    ]
    return [''.join(c) for c in itertools.product(*choices)]


def code_of(page):
    """The page's fenced blocks and inline code spans, in that order."""
    text = page.read_text()
    blocks = FENCE_RE.findall(text)
    prose = FENCE_RE.sub('', text)
    return blocks, INLINE_RE.findall(prose)


def shell_commands(code):
    """Commands of a code text: continuation lines joined, comments and
    heredoc bodies dropped, split at ``;``, ``&&``, ``|`` and ``&``, and
    ``$NAME`` replaced by a ``NAME="..."`` defined before it."""
    variables = {}
    commands = []
    lines = code.replace('\\\n', ' ').splitlines()
    heredoc_end = None
    for line in lines:
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        heredoc = re.search(r"<<-?\s*'?(\w+)'?", line)
        if heredoc:
            heredoc_end = heredoc.group(1)
            continue
        line = re.sub(r'(^|\s)#.*$', '', line)
        assign = re.fullmatch(r'\s*([A-Z_]+)="([^"]*)"\s*', line)
        if assign:
            variables[assign.group(1)] = assign.group(2)
            continue
        for name, value in variables.items():
            line = line.replace(f'${name}', value)
        commands.extend(c for c in re.split(r'&&|;|\||&', line) if c.strip())
    return commands


def tool_flags_used():
    """{tool path: {flag: 'page: command'}} over every documented command."""
    used = {}
    for page in PAGES:
        blocks, spans = code_of(page)
        for command in itertools.chain.from_iterable(
            shell_commands(code) for code in blocks + spans
        ):
            try:
                words = shlex.split(command)
            except ValueError:  # an unbalanced quote in prose code
                words = command.split()
            tool = None
            for word in words:
                if tool is None and re.fullmatch(
                    r'tools/[\w/]+\.(py|sh)', word
                ):
                    tool = PASSES_FLAGS_TO.get(word, word)
                    used.setdefault(tool, {})
                elif tool is not None and word.startswith('--'):
                    flag = word.split('=')[0]
                    used.setdefault(tool, {}).setdefault(
                        flag, f'{page.relative_to(REPO)}: {command.strip()}'
                    )
    return used


def test_pages_exist():
    assert len(GUIDES) >= 10
    assert {p.parent.name for p in CONFIG_READMES} >= {
        'ssdlite',
        'mobilenet_v2',
        'resnet',
    }


@pytest.mark.parametrize('page', PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_named_paths_exist(page):
    blocks, spans = code_of(page)
    text = '\n'.join(blocks + spans + [page.read_text()])
    missing = []
    for found in sorted(set(PATH_RE.findall(text))):
        for path in expand_braces(found):
            if not list(REPO.glob(path)):
                missing.append(path)
    assert not missing, f'{page.relative_to(REPO)} names {missing}'


@pytest.mark.parametrize('page', CONFIG_READMES, ids=lambda p: p.parent.name)
def test_config_readme_names_its_configs(page):
    """A config README names its configs by file name alone."""
    _, spans = code_of(page)
    names = [
        n
        for span in spans
        for n in expand_braces(span)
        if re.fullmatch(r'[\w.-]+\.py', n)
    ]
    assert names
    missing = [n for n in names if not (page.parent / n).is_file()]
    assert not missing, f'{page.relative_to(REPO)} names {missing}'


@pytest.mark.parametrize(
    'page',
    [REPO / 'README.md'] + CONFIG_READMES,
    ids=lambda p: str(p.relative_to(REPO)),
)
def test_relative_links_resolve(page):
    """Links of the pages mkdocs does not build (it checks the guides')."""
    broken = []
    for target in LINK_RE.findall(page.read_text()):
        if '://' in target or target.startswith('#'):
            continue
        if not (page.parent / target.split('#')[0]).exists():
            broken.append(target)
    assert not broken, f'{page.relative_to(REPO)} links {broken}'


def test_metafiles_list_every_config():
    index = yaml.safe_load((REPO / 'model-index.yml').read_text())
    assert sorted(index['Import']) == sorted(
        str(m.relative_to(REPO)) for m in METAFILES
    )
    assert len(METAFILES) == 3
    for metafile in METAFILES:
        meta = yaml.safe_load(metafile.read_text())
        collections = {c['Name'] for c in meta['Collections']}
        listed = []
        for model in meta['Models']:
            assert model['In Collection'] in collections, model['Name']
            assert (REPO / model['Config']).is_file(), model['Config']
            assert model['Name'] == Path(model['Config']).stem
            for result in model.get('Results', []):
                assert {'Task', 'Dataset', 'Metrics'} <= set(result)
            listed.append(model['Config'])
        folder = metafile.parent
        assert sorted(listed) == sorted(
            str(p.relative_to(REPO)) for p in folder.glob('*.py')
        )


def tool_help(load_tool, monkeypatch, capsys, tool):
    """What ``python TOOL --help`` prints, from the tool's own ``main`` in
    this process (the CLIs parse their arguments before anything else)."""
    monkeypatch.setattr(sys, 'argv', [tool, '--help'])
    module = load_tool(tool[len('tools/') : -len('.py')])
    with pytest.raises(SystemExit) as stop:
        module.main()
    assert stop.value.code in (0, None), f'{tool} --help exited {stop.value}'
    return capsys.readouterr().out


def test_documented_tool_flags_are_accepted(load_tool, monkeypatch, capsys):
    used = tool_flags_used()
    # The commands the guides must show, so that this test checks them.
    assert {
        'tools/train.py',
        'tools/test.py',
        'tools/analysis/benchmark_norm.py',
        'tools/model_converters/bn2dn.py',
    } <= set(used)
    unknown = []
    for tool in sorted(t for t in used if t.endswith('.py') and used[t]):
        out = tool_help(load_tool, monkeypatch, capsys, tool)
        accepted = set(re.findall(r'(?<![\w-])--[\w-]+', out))
        assert '--help' in accepted, f'{tool} printed no help: {out[:500]}'
        unknown += [
            f'{flag} ({where})'
            for flag, where in sorted(used[tool].items())
            if flag not in accepted
        ]
    assert not unknown, 'flags the tools do not accept:\n' + '\n'.join(unknown)


# What the docs name from the package: dotted module paths and attributes
# (`dn_mmdet.norm.fuse_norm_act`), registered ops (`dn_mmdet::moments`) and
# environment variables (`DN_MMDET_VENV`). The changelog is history and may
# name what is gone.
DOTTED_RE = re.compile(r'(?<![\w/.:-])dn_mmdet(?:\.\w+)+')
OP_RE = re.compile(r'dn_mmdet::(\w+)')
ENV_RE = re.compile(r'\bDN_MMDET_[A-Z0-9_]+\b')
CURRENT_PAGES = [p for p in PAGES if p.name != 'changelog.md']
CODE_FILES = [
    REPO / 'setup.py',
    *(REPO / 'dn_mmdet').rglob('*.py'),
    *(REPO / 'tools').rglob('*.py'),
    *(REPO / 'tools').rglob('*.sh'),
]


def resolves(dotted):
    """Whether ``a.b.c`` is a module, or an attribute of the longest
    importable module before it."""
    import importlib

    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_named_package_paths_and_ops_exist():
    import torch

    import dn_mmdet.ops

    # The C++ ops register when their library loads; the composite ones on
    # import.
    dn_mmdet.ops.load_cpu_ops()
    missing = []
    for page in CURRENT_PAGES:
        text = page.read_text()
        where = page.relative_to(REPO)
        missing += [
            f'{where}: {name}'
            for name in sorted(set(DOTTED_RE.findall(text)))
            if not resolves(name)
        ]
        missing += [
            f'{where}: dn_mmdet::{op}'
            for op in sorted(set(OP_RE.findall(text)))
            if not hasattr(torch.ops.dn_mmdet, op)
        ]
    assert not missing, 'the docs name what the package lacks:\n' + (
        '\n'.join(missing)
    )


def test_named_environment_variables_are_read_by_the_code():
    code = '\n'.join(p.read_text() for p in CODE_FILES)
    unread = [
        f'{page.relative_to(REPO)}: {name}'
        for page in CURRENT_PAGES
        for name in sorted(set(ENV_RE.findall(page.read_text())))
        if name not in code
    ]
    assert not unread, 'the docs name variables nothing reads:\n' + (
        '\n'.join(unread)
    )


def test_resolves_tells_a_removed_name():
    assert resolves('dn_mmdet.norm.fuse_norm_act')
    assert resolves('dn_mmdet.utils')
    assert not resolves('dn_mmdet.norm.activation_fusion')
    assert not resolves('dn_mmdet.norm.DynamicNorm2d.no_such_method')


TROUBLESHOOTING = REPO / 'docs' / 'en' / 'troubleshooting.md'


def rows_without_a_test(text):
    """Rows of the page's message table whose last cell names no existing
    ``tests/...py`` file."""
    rows = [
        line
        for line in text.splitlines()
        if line.startswith('| `') and line.rstrip().endswith('|')
    ]
    bad = []
    for row in rows:
        last = row.rstrip().rstrip('|').rsplit('|', 1)[-1]
        named = re.findall(r'tests/[\w/]+\.py', last)
        if not named or not all((REPO / n).is_file() for n in named):
            bad.append(row[:80])
    return rows, bad


def test_troubleshooting_lists_only_messages_a_test_shows():
    rows, bad = rows_without_a_test(TROUBLESHOOTING.read_text())
    assert len(rows) >= 10
    assert not bad, 'rows without an existing test:\n' + '\n'.join(bad)
    # A row without its test, or naming a test file that is gone, counts.
    planted = (
        '| `Some message` | cause | fix | |\n'
        '| `Other message` | cause | fix | `tests/test_gone.py` |\n'
    )
    assert len(rows_without_a_test(planted)[1]) == 2

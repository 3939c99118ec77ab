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

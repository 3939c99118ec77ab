"""The documentation site builds in mkdocs' strict mode (a broken link, a
missing anchor or a page left out of the nav fails it), and the README stays
a first visit's length."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README_MAX_LINES = 250


def test_site_builds_strictly(tmp_path):
    site = tmp_path / 'site'
    # --strict also on the command line, so that a mkdocs.yml that drops
    # `strict: true` still builds strictly here.
    proc = subprocess.run(
        [
            sys.executable,
            '-m',
            'mkdocs',
            'build',
            '--strict',
            '--config-file',
            str(REPO / 'mkdocs.yml'),
            '--site-dir',
            str(site),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING='1'),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    for page in sorted((REPO / 'docs' / 'en').glob('*.md')):
        built = site / 'en' / page.stem / 'index.html'
        if page.stem == 'index':
            built = site / 'en' / 'index.html'
        assert built.is_file(), f'{page} was not built into {built}'


def test_mkdocs_config_is_strict_and_lists_every_guide():
    import yaml

    # mkdocs.yml has no python tags, so the safe loader reads it.
    config = yaml.safe_load((REPO / 'mkdocs.yml').read_text())
    assert config['strict'] is True
    nav_pages = {next(iter(item.values())) for item in config['nav']}
    guides = {f'en/{p.name}' for p in (REPO / 'docs' / 'en').glob('*.md')}
    assert guides == nav_pages


def test_readme_is_short():
    lines = (REPO / 'README.md').read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f'README.md has {len(lines)} lines; keep it <= {README_MAX_LINES} '
        'and move detail into docs/en/'
    )

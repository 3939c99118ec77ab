"""Tables, plots and claim verdicts of a normaliser study.

    python tools/analysis/norm_study_report.py STUDY_DIR
    python tools/analysis/norm_study_report.py STUDY_DIR --claims OUT.md

Reads the run records of ``STUDY_DIR/results.json`` (``norm_study.py``
writes it) and writes ``table.md`` and the plots into ``STUDY_DIR``
(``dn_mmdet.analysis.study.report``). With ``--claims``, also the verdict
of each of the spec's claims with its 95% interval over seeds
(``dn_mmdet.analysis.study.claims``) as a markdown page.
"""

import argparse
import json
import os.path as osp

from dn_mmdet.analysis.study import write_report
from dn_mmdet.analysis.study.claims_page import write_claims_page


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Table, plots and claim verdicts of a normaliser study'
    )
    parser.add_argument('study_dir', help='directory holding results.json')
    parser.add_argument(
        '--claims',
        help="write the spec's claims with their verdicts "
        'to this markdown file',
    )
    parser.add_argument(
        '--no-plots', action='store_true', help='the table only'
    )
    args = parser.parse_args(argv)
    path = osp.join(args.study_dir, 'results.json')
    if not osp.isfile(path):
        raise SystemExit(f'norm_study_report: {path} does not exist')
    with open(path) as f:
        results = json.load(f)
    for written in write_report(
        results['study'],
        results['runs'],
        args.study_dir,
        plots=not args.no_plots,
    ):
        print(f'wrote {written}')
    if args.claims:
        write_claims_page(results, args.study_dir, args.claims)
        print(f'wrote {args.claims}')


if __name__ == '__main__':
    main()

"""Run DN on inputs without values (N = 0, or an empty map) on every path;
print one JSON line as each case starts and one with its result.

Run by test_dynamic_norm_edges.py in a process of its own: a path that
crashes (DN's fused training node once died of SIGFPE here) must not take
pytest down with it.
"""

import json

import torch
from dn_helpers import (
    EMPTY_BATCH_CASES,
    forward_in,
    randomize,
    recorded_dn_ops,
)

from dn_mmdet.norm import DynamicNorm2d


def main() -> None:
    for name, options, shape, setting, clamp in EMPTY_BATCH_CASES:
        print(json.dumps(dict(start=name)), flush=True)
        dn = randomize(DynamicNorm2d(16, **options))
        before = {k: v.clone() for k, v in dn.bn.state_dict().items()}
        result = dict(case=name, error=None)
        try:
            x = torch.randn(shape)
            with recorded_dn_ops() as ops:
                y = forward_in(dn, x, setting, clamp)
            result.update(shape=list(y.shape), dtype=str(y.dtype), ops=ops)
            after = dn.bn.state_dict()
            result['statistics_untouched'] = all(
                torch.equal(before[k], after[k]) for k in before
            )
            if y.requires_grad:
                y.sum().backward()
                result['x_grad_shape'] = list(x.grad.shape)
                result['sc_grads'] = [
                    None if p.grad is None else float(p.grad.abs().sum())
                    for p in dn.sc.parameters()
                ]
        except Exception as error:  # reported, not raised: the next case
            result['error'] = f'{type(error).__name__}: {error}'
        print(json.dumps(result), flush=True)


if __name__ == '__main__':
    main()

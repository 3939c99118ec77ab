"""Record and plot DN's generated scale and shift per class (DN Figure 5);
``tools/analysis/plot_dn_affine.py`` is its command line.

The DN paper's Figure 5 shows, for the first DN layer of MobileNetV2
("DN-start") and the last ("DN-end"), the affine parameters DN-B generates
for the images of four classes, per channel: it finds the class means almost
the same, i.e. DN learns BN's function in those layers. This tool makes that
figure for any model with DN-B layers and any dataset config: a detector
(images are given to the class that covers the most box area in them) or a
classifier (the image's label).

For each chosen layer, a forward hook on its SC-Module records, per image,
``alpha = base_scale + dalpha`` and ``lambda = base_shift + dlambda`` (C
values each, the layer is not modified; the model runs in eval mode on the
split's test pipeline). The plot has one row per layer and two panels
(alpha, lambda), one line per class: the mean over the class's images per
channel (layers wider than ``max_channels`` show every k-th channel, as
the paper shows every 4th of DN-end's 1280). The summary compares the
spread of the class means across classes with the spread of the images
within a class.

The figure is drawn on its own ``matplotlib.figure.Figure`` (no pyplot):
the process's matplotlib backend is left as it is.
"""

import math
from typing import Dict, List, Sequence

import numpy as np
import torch

# Where per-image records go: {layer name: {'alpha': [(N, C)], 'lambda': ...}}
_Records = Dict[str, Dict[str, List[torch.Tensor]]]


def dn_b_layers(model: torch.nn.Module) -> Dict[str, torch.nn.Module]:
    """The model's DN-B layers by qualified name, in definition order."""
    from dn_mmdet.norm import DynamicNorm2d

    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, DynamicNorm2d) and m.mode == 'B'
    }


def select_layers(
    model: torch.nn.Module, wanted: Sequence[str]
) -> Dict[str, torch.nn.Module]:
    """``wanted`` names (``'first'``/``'last'`` for the first/last DN-B
    layer) -> ``{name: layer}``.

    Raises:
        ValueError: no DN-B layer in the model, or a name that is not one.
    """
    layers = dn_b_layers(model)
    if not layers:
        raise ValueError(
            'the model has no DN-B layer '
            "(norm_cfg type 'DN' with mode 'B'); DN-C shares "
            'one affine across the batch'
        )
    names = list(layers)
    selected = {}
    for want in wanted:
        name = {'first': names[0], 'last': names[-1]}.get(want, want)
        if name not in layers:
            raise ValueError(
                f'{want!r} is not a DN-B layer of the model; '
                f'its DN-B layers are {names[0]!r} ... {names[-1]!r} '
                f'({len(names)} in all)'
            )
        selected[name] = layers[name]
    return selected


def image_class(info: dict, dataset_name: str, index: int) -> int:
    """The class of one image: its label (classification) or the class
    covering the most box area (detection); -1 for an image without boxes.
    """
    if 'gt_label' in info:
        label = np.asarray(info['gt_label']).reshape(-1)
        return int(label[0])
    if 'instances' in info:
        area: Dict[int, float] = {}
        for inst in info['instances']:
            if inst.get('ignore_flag', 0):
                continue
            x1, y1, x2, y2 = inst['bbox']
            label = int(inst['bbox_label'])
            area[label] = area.get(label, 0.0) + (x2 - x1) * (y2 - y1)
        return max(area, key=area.get) if area else -1
    raise ValueError(
        f'sample {index} of {dataset_name} has '
        "neither 'gt_label' (classification) nor 'instances' "
        '(detection)'
    )


def images_by_class(
    dataset,
    classes: Sequence[str] = None,
    max_images: int = 50,
    default_count: int = 4,
) -> Dict[str, List[int]]:
    """Dataset indices of up to ``max_images`` images of each class.

    Args:
        dataset: An mmengine ``BaseDataset`` with ``metainfo['classes']``.
        classes (list[str], optional): Class names; default the first
            ``default_count`` classes that have images.

    Raises:
        ValueError: an unknown class, or a class without images.
    """
    name = type(dataset).__name__
    all_classes = list(dataset.metainfo['classes'])
    for c in classes or []:
        if c not in all_classes:
            raise ValueError(
                f'unknown class {c!r}; the classes of {name} are {all_classes}'
            )
    found: Dict[int, List[int]] = {}
    for index in range(len(dataset)):
        label = image_class(dataset.get_data_info(index), name, index)
        if label >= 0:
            found.setdefault(label, []).append(index)
    if classes is None:
        classes = [c for i, c in enumerate(all_classes) if found.get(i)][
            :default_count
        ]
    result = {}
    for c in classes:
        indices = found.get(all_classes.index(c), [])
        if not indices:
            raise ValueError(
                f'no image of class {c!r} in {name} ({len(dataset)} images)'
            )
        result[c] = indices[:max_images]
    return result


def record_affines(
    model,
    dataset,
    layers: Dict[str, torch.nn.Module],
    indices: Sequence[int],
    batch_size: int = 8,
):
    """Run ``model`` on the ``indices`` images; return ``{layer: (alpha,
    lambda)}``, each a (len(indices), C) tensor."""
    from mmengine.dataset import pseudo_collate

    records: _Records = {name: dict(alpha=[], lam=[]) for name in layers}

    def hook_for(name, layer):

        def hook(module, args, output):
            alpha_delta, lambda_delta = output
            records[name]['alpha'].append(
                (alpha_delta + layer.base_scale).detach().float().cpu()
            )
            records[name]['lam'].append(
                (lambda_delta + layer.base_shift).detach().float().cpu()
            )

        return hook

    handles = [
        layer.sc.register_forward_hook(hook_for(name, layer))
        for name, layer in layers.items()
    ]
    try:
        with torch.no_grad():
            for start in range(0, len(indices), batch_size):
                batch = pseudo_collate(
                    [dataset[i] for i in indices[start : start + batch_size]]
                )
                data = model.data_preprocessor(batch, False)
                model(**data, mode='tensor')
    finally:
        for handle in handles:
            handle.remove()
    result = {}
    for name, rec in records.items():
        alpha, lam = torch.cat(rec['alpha']), torch.cat(rec['lam'])
        if alpha.shape[0] != len(indices):
            raise RuntimeError(
                f'layer {name} ran for {alpha.shape[0]} '
                f'samples, expected {len(indices)} (is it called once a '
                'forward?)'
            )
        result[name] = (alpha, lam)
    return result


def summary_line(layer: str, entry: dict) -> str:
    """One line of :func:`summarise`'s figures of a layer."""
    return f'{layer} ({entry["channels"]} channels): ' + '; '.join(
        f'{which} mean {entry[f"{which}_mean"]:.3f}, between-class std '
        f'{entry[f"{which}_between_class_std"]:.4f}, within-class std '
        f'{entry[f"{which}_within_class_std"]:.4f}'
        for which in ('alpha', 'lambda')
    )


def summarise(per_class: Dict[str, Dict[str, tuple]]) -> dict:
    """Per layer and class: mean and std over images per channel, and the
    across-class vs within-class spread.

    Args:
        per_class: ``{class: {layer: (alpha, lambda)}}``, (n, C) tensors.
    """
    layers = next(iter(per_class.values())).keys()
    summary = {}
    for layer in layers:
        entry = dict(classes={})
        for which, pos in (('alpha', 0), ('lambda', 1)):
            means, within = [], []
            for cls, by_layer in per_class.items():
                values = by_layer[layer][pos]
                mean = values.mean(0)
                std = (
                    values.std(0)
                    if values.shape[0] > 1
                    else torch.zeros_like(mean)
                )
                stats = entry['classes'].setdefault(
                    cls, dict(images=values.shape[0])
                )
                stats[f'{which}_mean'] = mean.tolist()
                stats[f'{which}_std'] = std.tolist()
                means.append(mean)
                within.append(std)
            means = torch.stack(means)
            entry[f'{which}_between_class_std'] = (
                means.std(0).mean().item() if len(means) > 1 else 0.0
            )
            entry[f'{which}_within_class_std'] = (
                torch.stack(within).mean().item()
            )
            entry[f'{which}_mean'] = means.mean().item()
        entry['channels'] = len(
            entry['classes'][next(iter(per_class))]['alpha_mean']
        )
        summary[layer] = entry
    return summary


def plot_affines(
    summary: dict, out: str, max_channels: int = 320, title: str = None
) -> None:
    """Saves the figure of :func:`summarise`'s ``summary`` to ``out``: one
    row per layer, alpha and lambda panels, one line per class (layers wider
    than ``max_channels`` show every k-th channel)."""
    from matplotlib.figure import Figure

    rows = len(summary)
    fig = Figure(figsize=(11, 2.8 * rows), dpi=120)
    axes = fig.subplots(rows, 2, squeeze=False)
    for row, (layer, entry) in enumerate(summary.items()):
        channels = entry['channels']
        step = max(1, math.ceil(channels / max_channels))
        shown = np.arange(0, channels, step)
        for col, (which, symbol) in enumerate(
            (('alpha', 'alpha (scale)'), ('lambda', 'lambda (shift)'))
        ):
            ax = axes[row, col]
            for index, (cls, stats) in enumerate(entry['classes'].items()):
                mean = np.asarray(stats[f'{which}_mean'])[shown]
                ax.plot(
                    shown,
                    mean,
                    linewidth=0.8,
                    color=f'C{index % 10}',
                    label=f'{cls} ({stats["images"]} images)',
                )
            every = '' if step == 1 else f', every {step}th channel'
            ax.set_title(
                f'{layer} ({channels} channels{every})\n{symbol}: between-'
                f'class std {entry[f"{which}_between_class_std"]:.3g}, '
                f'within-class std {entry[f"{which}_within_class_std"]:.3g}',
                fontsize=7,
            )
            ax.set_xlabel('channel')
            ax.set_ylabel(f'mean {which}')
            ax.grid(True, alpha=0.3)
        axes[row, 0].legend(fontsize=6)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out)


def build_model_and_dataset(
    config: str, checkpoint: str, split: str, cfg_options: dict = None
):
    """The model (eval, checkpoint loaded strictly) and a split's dataset."""
    from mmengine.registry import DATASETS, MODELS, init_default_scope
    from mmengine.runner import load_checkpoint

    import dn_mmdet  # noqa: F401  (registers DN, also without custom_imports)
    from dn_mmdet.utils.compat import safe_checkpoint_loading
    from dn_mmdet.utils.launch import check_file, load_config

    cfg = load_config(config, cfg_options)
    check_file(checkpoint, 'Checkpoint')
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    loader = cfg.get(f'{split}_dataloader')
    if not loader or 'dataset' not in loader:
        raise ValueError(f'{config} has no {split}_dataloader.dataset')
    model = MODELS.build(cfg.model)
    with safe_checkpoint_loading():
        load_checkpoint(
            model, checkpoint, map_location='cpu', strict=True, logger='silent'
        )
    model.eval()
    dataset = DATASETS.build(loader['dataset'])
    return model, dataset

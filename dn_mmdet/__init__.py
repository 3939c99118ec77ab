"""dn_mmdet: Dynamic Normalization for MMDetection 3.x.

Importing the package registers everything it provides (the ``DN`` norm
layer, the MobileNetV2-DN backbone, the FNA SSDLite neck and head, datasets
and hooks), so a config needs only
``custom_imports=dict(imports=['dn_mmdet'], allow_failed_imports=False)``.
It changes nothing else in the process: loading mmengine checkpoints under
torch's weights-only default is switched on explicitly, by
``dn_mmdet.utils.safe_checkpoint_loading()`` around a run (the tools do
this) or the ``SafeCheckpointLoaderHook`` of the project's runtime configs.
"""

from .utils import torchvision_compat
from .version import __version__

# Registering needs mmdet.models, which imports mmpretrain and with it
# torchvision: where torchvision's C++ extension cannot load beside this
# torch (the registries' CUDA build beside CPU torch), declare the two
# operators its import needs. Does nothing where the extension loads.
torchvision_compat.define_missing_ops()

from . import datasets, engine, models, norm  # noqa: E402,F401

__all__ = ['__version__']

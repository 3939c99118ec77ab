"""dn_mmdet: Dynamic Normalization for MMDetection 3.x.

Importing the package registers everything it provides (the ``DN`` norm
layer, the MobileNetV2-DN backbone, the FNA SSDLite neck and head, datasets
and hooks), so a config needs only
``custom_imports=dict(imports=['dn_mmdet'], allow_failed_imports=False)``.
"""
from .version import __version__
from .utils import compat  # noqa: F401  (makes mmengine checkpoints load under weights_only)
from .utils import torchvision_compat  # noqa: F401  (before anything imports torchvision)
from . import norm  # noqa: F401,E402
from . import models  # noqa: F401,E402
from . import datasets  # noqa: F401,E402
from . import engine  # noqa: F401,E402

__all__ = ['__version__']

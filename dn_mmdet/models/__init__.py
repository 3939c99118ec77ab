from . import backbones, dense_heads, necks  # noqa: F401

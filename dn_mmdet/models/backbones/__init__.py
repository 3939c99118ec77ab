from .mobilenet_v2_dn import MobileNetV2DN

__all__ = ['MobileNetV2DN']

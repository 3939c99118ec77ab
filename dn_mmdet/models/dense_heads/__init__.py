from .fna_ssdlite_head import FNASSDLiteHead

__all__ = ['FNASSDLiteHead']

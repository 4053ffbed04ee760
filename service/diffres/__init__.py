"""DiffRes and the fixed-resolution baselines: a linear-time, exportable reimplementation of
the published ``pydiffres`` modules that loads their state dicts unchanged."""

from service.diffres.diffres import Base, DiffRes
from service.diffres.pooling import AvgMaxPool, AvgPool, ChangeHopSize, ConvAvgPool, FullResolution

__all__ = ["Base", "DiffRes", "AvgPool", "AvgMaxPool", "ConvAvgPool", "ChangeHopSize",
           "FullResolution"]

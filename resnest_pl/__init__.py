"""resnest_pl: a PyTorch Lightning research template for ResNeSt (Split-Attention Networks)."""

__version__ = "0.1.0"

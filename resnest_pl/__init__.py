"""resnest_pl: a PyTorch Lightning research template for ResNeSt (Split-Attention Networks)."""

import os

# Albumentations asks PyPI for a newer version on import (a network call with a timeout) unless told not to;
# training jobs, often offline, should not.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"

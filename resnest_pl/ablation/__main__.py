"""``python -m resnest_pl.ablation --config configs/ablation/<grid>.yaml``: see :mod:`resnest_pl.ablation.run`."""

import sys

from ..errors import stop_on_signals
from .run import main

if __name__ == "__main__":
    stop_on_signals()
    sys.exit(main())

"""``python -m resnest_pl.ablation --config configs/ablation/<grid>.yaml``: see :mod:`resnest_pl.ablation.run`."""

import signal
import sys

from .launch import raise_interrupted
from .run import main

if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM):  # `kill` stops the current fit too, like Ctrl-C
        signal.signal(signum, raise_interrupted)
    sys.exit(main())

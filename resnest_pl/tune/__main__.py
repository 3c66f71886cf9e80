import signal
import sys

from ..ablation.launch import raise_interrupted
from .command import main

if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM):  # `kill` stops the running fit too, like Ctrl-C
        signal.signal(signum, raise_interrupted)
    sys.exit(main())

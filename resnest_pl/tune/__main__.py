import signal
import sys

from .command import main, raise_interrupted

if __name__ == "__main__":
    for signum in (signal.SIGINT, signal.SIGTERM):  # `kill` stops the running fit too, like Ctrl-C
        signal.signal(signum, raise_interrupted)
    sys.exit(main())

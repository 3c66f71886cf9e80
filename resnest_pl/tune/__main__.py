import sys

from ..errors import stop_on_signals
from .command import main

if __name__ == "__main__":
    stop_on_signals()
    sys.exit(main())

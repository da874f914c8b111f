import sys

from . import main

if __name__ == "__main__":  # not in the worker processes, which import this module again
    sys.exit(main())

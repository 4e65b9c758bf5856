"""``python -m minibnn``: the command line."""
import sys

from minibnn.cli import main

sys.exit(main())

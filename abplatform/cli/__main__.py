"""`python -m abplatform.cli`: the command line."""

from abplatform.cli import main

main()

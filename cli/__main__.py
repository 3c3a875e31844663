"""``python -m cli``: the same as the ``billing`` command."""

from cli.main import main

main()

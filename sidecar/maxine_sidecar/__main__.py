"""``python -m maxine_sidecar`` is the ``maxine-sidecar`` command."""

from maxine_sidecar.cli import main

main()

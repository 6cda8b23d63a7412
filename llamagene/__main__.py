"""``python -m llamagene`` is the ``llamagene`` command."""

from llamagene.cli import main

raise SystemExit(main())

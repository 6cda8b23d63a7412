"""``python -m llamagene.training SPEC.json``: one training worker (see :mod:`.worker`)."""

from llamagene.training.worker import main

raise SystemExit(main())

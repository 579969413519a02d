"""``python -m snapper.cli <command>`` (what ``torchrun -m snapper.cli train ...`` runs)."""

from snapper.cli import main

raise SystemExit(main())

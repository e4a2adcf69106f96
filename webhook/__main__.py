"""`python -m webhook` runs the command line, the same as the `sidecar-webhook` script."""

from webhook.cli import main

raise SystemExit(main())

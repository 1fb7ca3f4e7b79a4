"""`python -m pipelines.cli`: the `livelens` command without the installed script."""

import sys

from pipelines.cli.main import main

sys.exit(main())

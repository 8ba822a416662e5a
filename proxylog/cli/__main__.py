"""`python -m proxylog.cli`: the same as the `proxylog` command."""

from __future__ import annotations

import sys

from proxylog.cli import main

sys.exit(main())

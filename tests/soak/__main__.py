"""``python -m tests.soak``: the full soak (500 pods, 10 minutes); see tests/soak/soak.py."""

import sys

from tests.soak.soak import main

sys.exit(main())

#!/usr/bin/env python3
"""Fuzz `infill-lsp serve` over stdio: see infill_lsp/lsp/fuzz.py (also `infill-lsp bench --fuzz N --seed S`).

    .venv/bin/python scripts/fuzz.py --messages 10000 --seed 1
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from infill_lsp.lsp.fuzz import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())

"""Search speed on a million-file catalog (the target: every screen search under 1 s).

.venv/bin/python bench/search.py [--files 1000000]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_ui_search import test_every_screen_search_works_on_a_large_catalog


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=1_000_000)
    args = ap.parse_args()
    os.environ["SEARCH_BENCH_FILES"] = str(args.files)
    import test_ui_search

    test_ui_search.BIG = args.files
    with tempfile.TemporaryDirectory() as d:
        test_every_screen_search_works_on_a_large_catalog(Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())

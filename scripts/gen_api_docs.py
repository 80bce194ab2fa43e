"""Write docs/API.md from the code (l9/apidoc.py); with --check, only say whether it is current.

.venv/bin/python scripts/gen_api_docs.py           # rewrite docs/API.md
.venv/bin/python scripts/gen_api_docs.py --check   # exit 1 if docs/API.md is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from l9.apidoc import render  # noqa: E402 (after the repository is on the path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/API.md is not current")
    args = parser.parse_args()
    target = ROOT / "docs" / "API.md"
    text = render()
    if args.check:
        current = target.read_text() if target.exists() else ""
        if current != text:
            print(f"{target} is stale: run python scripts/gen_api_docs.py", file=sys.stderr)
            return 1
        print(f"{target} is current")
        return 0
    target.write_text(text)
    print(f"wrote {target} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

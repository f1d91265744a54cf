"""Write README.md's table of settings from the Settings fields in proxy/config.py.

    python scripts/settings_table.py          # rewrite the table in README.md
    python scripts/settings_table.py --check  # exit 1 (and show the diff) when it is stale

The table is the block of ``|`` lines that starts with the header row of
:func:`proxy.config.settings_table`; tests/test_config.py fails when it differs.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path

from proxy.config import settings_table

README = Path(__file__).resolve().parent.parent / "README.md"


def with_table(readme: str, table: str) -> str:
    """``readme`` with its settings table replaced by ``table``."""
    lines = readme.splitlines(keepends=True)
    header = table.splitlines(keepends=True)[0]
    start = lines.index(header)  # ValueError: README.md has no settings table
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "".join([*lines[:start], table, *lines[end:]])


def main(argv: list[str]) -> int:
    readme = README.read_text(encoding="utf-8")
    wanted = with_table(readme, settings_table())
    if wanted == readme:
        return 0
    if "--check" in argv:
        diff = difflib.unified_diff(
            readme.splitlines(keepends=True),
            wanted.splitlines(keepends=True),
            "README.md",
            "README.md (from proxy/config.py)",
        )
        sys.stdout.writelines(diff)
        return 1
    README.write_text(wanted, encoding="utf-8")
    print("README.md: settings table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Fail CI unless the demo found the particles and wrote its report."""

import re
import sys
from pathlib import Path


def main() -> None:
    """Check ``demo.log``'s last line and that ``report.html`` was written."""
    log, report = Path(sys.argv[1]), Path(sys.argv[2])
    last = log.read_text().strip().splitlines()[-1]
    match = re.fullmatch(r"recall ([0-9.]+) precision ([0-9.]+)", last.strip())
    if match is None:
        sys.exit(f"demo: unexpected last line {last!r}")
    recall, precision = float(match.group(1)), float(match.group(2))
    if recall < 0.9 or precision < 0.95:
        sys.exit(f"demo: recall {recall} precision {precision} below 0.9 / 0.95")
    if not report.is_file() or report.stat().st_size < 10_000:
        sys.exit(f"demo: no report at {report}")
    print(f"demo ok: recall {recall} precision {precision}, report {report}")


if __name__ == "__main__":
    main()

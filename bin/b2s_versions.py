#!/usr/bin/env python3
"""Print an nf-core style versions.yml block for one process.

Usage: b2s_versions.py "<task.process>" pkg [pkg ...] > versions.yml
Reads installed distribution metadata only (no heavy imports), so it is cheap in every task.
"""

import platform
import sys
from importlib.metadata import PackageNotFoundError, version


def main(argv: list[str]) -> None:
    """Write the YAML block for process ``argv[0]`` listing python and the given packages."""
    process, packages = argv[0], argv[1:]
    lines = [f'"{process}":', f"    python: {platform.python_version()}"]
    for pkg in packages:
        try:
            lines.append(f"    {pkg}: {version(pkg)}")
        except PackageNotFoundError:
            lines.append(f"    {pkg}: not installed")
    import b2s  # the pipeline's own package, versioned with the pipeline

    lines.append(f"    b2s: {b2s.__version__}")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])

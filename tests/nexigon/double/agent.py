"""Executable entry of the fake ``nexigon-agent`` (the wrapper script execs this file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from double.cli import main

if __name__ == "__main__":
    sys.exit(main())

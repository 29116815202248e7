"""Tests import the project from this folder, installed or not (`pytest` from a fresh clone)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

"""Makes the shared pair of algorithm_pairs.py importable by this folder's tests."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

"""Where the repository lives: its root, shipped configs and prompts are found relative to it."""
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"

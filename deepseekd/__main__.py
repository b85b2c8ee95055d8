"""``python -m deepseekd`` → the CLI. The guard matters: vLLM spawns child processes."""

import sys

from deepseekd.cli import main

if __name__ == "__main__":
    sys.exit(main())

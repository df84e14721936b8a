"""Shared by the job entrypoints: run one ``lrat`` stage inside a Ray job.

Inside ``ray job submit`` Ray sets ``RAY_ADDRESS``, so the stage joins that cluster instead of
starting a local Ray. The repository root goes on ``sys.path`` so the uploaded working directory's
``lrat_ray`` is importable even where the package is not installed (a ``runtime_env`` or image that
installs it works as well). The exit status is the stage's: 0 done (or already done), 2 bad input
or configuration, anything else a crash, which Ray reports as a failed job.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(stage: str) -> None:
    from lrat_ray.cli import main

    sys.exit(main([stage, *sys.argv[1:]]))

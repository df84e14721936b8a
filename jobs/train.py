"""Ray job entrypoint for training: ``ray job submit --working-dir . -- python jobs/train.py --pairs ... --output ...``.

Takes exactly the options of ``lrat train``; inside a Ray job ``RAY_ADDRESS`` is set, so it joins
the cluster instead of starting a local Ray.
"""

import sys

from lrat_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))

"""Ray job entrypoint for mining: ``ray job submit --working-dir . -- python jobs/mine.py --input ... --output ...``.

Takes exactly the options of ``lrat mine``; inside a Ray job ``RAY_ADDRESS`` is set, so it joins
the cluster instead of starting a local Ray.
"""

import sys

from lrat_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["mine", *sys.argv[1:]]))

"""``lrat mine``: trajectories in, weighted pairs out, sharded with Ray Data.

Pipeline (``run_mine``):

1. The input files are listed (files, directories, globs; local or any pyarrow filesystem) and cut
   into groups. A Ray Data actor pool (one tokenizer per actor) mines each group with the pure
   core (:func:`mine_file_group`), writes the group's unweighted pairs to a staging Parquet file
   and returns a small summary: record counts by outcome, a histogram of reasoning lengths and the
   Table-1 sums. Finished groups are reused if the run is restarted with the same configuration.
2. The driver merges the summaries. The histogram gives the exact global ``beta`` and ``mu_raw``.
3. One Ray task per staged file adds the ``weight`` column and writes ``DIR/pairs/part-NNNNN.parquet``
   (input order), built in a temporary directory and renamed into place. The returned report is
   recorded as ``DIR/report.json`` by :func:`lrat_ray.infra.stage_run.run_stage`.

Every record read is counted as used or as skipped under a reason: records_read = records_used +
sum(records_skipped). With ``strict`` the first bad record stops the run with an error naming the
file, the record and the field.

Modules: :mod:`.config` (``MineConfig``, the length measure), :mod:`.groups` (one group of files
-> staged pairs and a summary), :mod:`.driver` (the stage on Ray).
"""

from lrat_ray.stages.mine.config import MineConfig, length_measure
from lrat_ray.stages.mine.driver import run_mine
from lrat_ray.stages.mine.groups import label_judge, labels_source, mine_file_group

__all__ = ["MineConfig", "label_judge", "labels_source", "length_measure", "mine_file_group", "run_mine"]

"""Experiments built from the stages: the flywheel (serve, roll out, mine, judge, train, re-index,
evaluate, repeat) and the powered ablation with its statistics."""

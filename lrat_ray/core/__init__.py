"""The pure core of LRAT: trajectories and their adapters, mining, reasoning-length weights, the
pairs table, the weighted InfoNCE loss, metrics, datasets and corpora. Plain functions over plain
data; nothing here imports Ray (tests/test_layers.py checks)."""

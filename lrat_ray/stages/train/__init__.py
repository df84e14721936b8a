"""``lrat train``: weighted-contrastive training of a bi-encoder on Ray Train.

The input is pairs: ``lrat mine`` output (``pairs/*.parquet``, see :mod:`lrat_ray.core.pairs`) or the
official LRAT release JSONL (``query, pos, neg, pos_id, neg_id, reasoning_len, satisfied,
reweight_rate``). Document texts come from ``--corpus`` by id when given, else from the pairs
(the text the agent was shown). Each training example is one query, its positive, ``group_size - 1``
of its in-set negatives (sampled, repeated when there are too few) and its weight; the loss is
:func:`lrat_ray.core.loss.weighted_info_nce` with in-batch negatives gathered across workers.

Training runs in a ``ray.train.torch.TorchTrainer``: the pairs are a Ray Dataset split across
workers (``get_dataset_shard``); the backend is plain DDP (gloo on CPU, NCCL on GPU) or DeepSpeed
ZeRO (stage and precision from a JSON config kept in ``lrat_ray/configs/``). Options: gradient
accumulation, linear warmup and decay, GradCache (``grad_cache_chunk``: embeddings are computed
without gradients, the loss is differentiated with respect to them, then each chunk is re-encoded
with its cached gradient, so the contrastive batch is not limited by activation memory), LoRA for
large decoder embedders (peft), gradient checkpointing (full or selective), regional
``torch.compile`` of the layers, input tokenized ahead in a thread, bf16 (autocast, and on GPUs
bf16 weights with fp32 masters), padding-free packed encoding. Checkpoints are
``ray.train.Checkpoint`` directories; with ``max_failures`` a dead worker group restarts from the
latest one at the step where it was taken. The final model is written in Hugging Face format (plus
sentence-transformers' module files) to ``output``, atomically.

The package, by layer: :mod:`~lrat_ray.stages.train.config` (options), :mod:`~lrat_ray.stages.train.data` (pairs
-> examples, collation), :mod:`~lrat_ray.stages.train.step` (forward/loss/backward, GradCache),
:mod:`~lrat_ray.stages.train.optimizer` (AdamW and its schedule, bf16 weights with fp32 masters, the one
optimizer step), :mod:`~lrat_ray.stages.train.checkpointing` (off/full/selective recompute),
:mod:`~lrat_ray.stages.train.regional_compile` (``torch.compile`` per layer),
:mod:`~lrat_ray.stages.train.prefetch` (input prepared ahead of the step), :mod:`~lrat_ray.stages.train.worker`
(the Ray Train worker loop, checkpoints, DeepSpeed) and
:mod:`~lrat_ray.stages.train.driver` (``run_train`` and the in-process ``fit_in_process``).
"""

from lrat_ray.stages.train.config import BACKENDS, CONFIG_DIR, TrainConfig
from lrat_ray.stages.train.data import EXAMPLE_COLUMNS, group_texts, load_examples
from lrat_ray.stages.train.driver import fit_in_process, run_train
from lrat_ray.stages.train.grad_cache import GradCacheStepRunner, RandomState
from lrat_ray.stages.train.step import StepRunner, step_runner
from lrat_ray.stages.train.worker import deepspeed_config

__all__ = [
    "BACKENDS",
    "CONFIG_DIR",
    "EXAMPLE_COLUMNS",
    "GradCacheStepRunner",
    "RandomState",
    "StepRunner",
    "TrainConfig",
    "deepspeed_config",
    "fit_in_process",
    "group_texts",
    "load_examples",
    "run_train",
    "step_runner",
]

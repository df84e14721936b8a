"""``lrat judge``: the reasoning-aware relevance judge (LRAT, Sec. 3.2), streaming on Ray Data.

Modules: :mod:`.prompts` (prompts, label parsing, cache keys), :mod:`.rows` (judge columns of
a batch), :mod:`.backends` (the registry of judges), :mod:`.config` (``JudgeConfig``) and
:mod:`.pipeline` (the stage on Ray Data: input, cache, model, output).

Agents open documents that turn out useless. What the agent writes right after reading a document
says whether it helped, so an LLM reads that post-browse reasoning and answers ``RELEVANT`` or
``NOT_RELEVANT``; the official LRAT judge says ``NOT_RELEVANT`` only on a clear negative judgement,
since agents often keep searching even after a useful page.

**What is judged.** ``--pairs DIR`` labels mined pairs (``DIR/pairs``) and writes them with judge
columns to ``OUTPUT/pairs``; training's ``filter``/``reweight`` read the labels. ``--events
TRAJECTORIES`` labels every *browse event* of the trajectories (``OUTPUT/labels``: trajectory id,
browse turn, document, label) so that ``lrat mine --labels OUTPUT`` can mine with them: the
official builder (``--negative-mode since-last-positive``) judges each browse while it mines, and a
judged-irrelevant browse changes the windows and the hard negatives, so judging finished pairs
afterwards cannot give its pairs.

**Prompts** (``prompt``):

``lrat-official`` (default)
    The official LRAT judge prompt's decision rule, verbatim, and only the post-browse reasoning:
    the judge reads the agent's reaction to the document, which is the signal LRAT is about.
``query-document``
    The same rule, plus the query and the start of the document; a strong LLM then makes its own
    topical call as well. Kept for comparison.

**Answers.** ``guided`` (default on) forces the answer to one of the two labels where the backend
can (vLLM guided choice; a JSON-schema ``response_format`` for OpenAI-compatible servers); free
text is parsed robustly anyway (:func:`parse_label`). Thinking judges (``thinking``, e.g.
Qwen3-*-Thinking, whose chat template opens ``<think>`` in the prompt) need ``guided`` off and a
large ``max_new_tokens``: only the text after the last ``</think>`` counts, and an answer whose
thinking never closed (cut off by the budget) is unparseable.

**Failures.** A row whose generation fails (engine error, timeout, HTTP error after retries) gets
``judge_status=failed``; an answer without a label ``unparseable``; neither aborts the job, both
are counted. ``on_failure`` sets their label: ``relevant`` (default: a failed call says nothing
about the document, so the browse keeps its positive signal) or ``irrelevant`` (the official
code's policy, chosen by the paper-reproduction recipe).

Each judged row gets ``relevant`` (the label used downstream), ``judge_label`` (true/false/null),
``judge_status`` (``ok``, ``cached``, ``unparseable``, ``failed``, ``not_judged``), ``judge_raw``,
``judge_backend``, ``judge_model``, ``judge_prompt_version`` and ``judge_key``. Parsed answers
are cached (Parquet under ``cache``) by the hash of the model, the prompt version and the rendered
prompt; a re-run joins the rows with the cache in Ray Data and sends only the misses to the model.
A job killed mid-way keeps the blocks it finished (``OUTPUT/.pairs.partial``): the resubmitted job
puts their answers into the cache first, so only the rest reaches the model.

Backends (``backend``): ``vllm`` (``ray.data.llm`` engine actors; GPU or CPU), ``openai`` (any
OpenAI-compatible endpoint through :class:`~lrat_ray.infra.chat_client.ChatClient`), ``transformers`` (a
local causal LM in Ray Data actors), ``keyword`` (no model: ``NOT_RELEVANT`` exactly when the
reasoning contains an explicit negative phrase of the rule; a transparent stand-in) and ``none``
(keep every browse: the paper's naive variant).
"""

from lrat_ray.stages.judge.config import JudgeConfig
from lrat_ray.stages.judge.pipeline import run_judge

__all__ = ["JudgeConfig", "run_judge"]

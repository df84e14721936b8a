import pytest

from lrat_ray.cli import build_parser
from lrat_ray.infra.config import check_inputs, resolve
from lrat_ray.infra.errors import LratError
from lrat_ray.stages.mine import MineConfig


def test_yaml_then_command_line_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("mine:\n  input: [a.jsonl]\n  output: out\n  workers: 4\n  exclude-browsed: false\n")
    args = build_parser().parse_args(["mine", "--config", str(config), "--workers", "8"])
    resolved = resolve(MineConfig, args, str(config), "mine")
    assert (resolved.input, resolved.output, resolved.workers, resolved.exclude_browsed) == (
        ["a.jsonl"],
        "out",
        8,
        False,
    )
    assert resolved.negative_mode == "attributed"  # untouched default


def test_unknown_yaml_key_and_missing_required_option(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("input: [a]\noutput: o\nworkerz: 3\n")
    with pytest.raises(LratError, match="unknown option.*workerz"):
        resolve(MineConfig, {}, str(config))
    with pytest.raises(LratError, match="--output"):
        resolve(MineConfig, {"input": ["a"]})
    with pytest.raises(LratError, match=r"workers \(--workers\): 0 is below the minimum 1"):
        resolve(MineConfig, {"input": ["a"], "output": "o", "workers": 0})


def test_choices_are_enforced_on_the_command_line():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["mine", "--input", "x", "--output", "y", "--negative-mode", "random"])
    with pytest.raises(SystemExit):  # the old name too
        build_parser().parse_args(["mine", "--input", "x", "--output", "y", "--negatives", "random"])


def test_renamed_options_are_still_read_under_their_old_names_with_a_message(tmp_path, caplog):
    from lrat_ray.experiments.flywheel import FlywheelConfig
    from lrat_ray.stages.pairs_from_qrels import PairsFromQrelsConfig

    config = tmp_path / "c.yaml"
    config.write_text("input: [a]\noutput: o\nnegatives: since-last-positive\n")
    with caplog.at_level("WARNING"):
        assert resolve(MineConfig, {}, str(config)).negative_mode == "since-last-positive"
    assert f"config {config}: option 'negatives' is now called 'negative_mode'" in caplog.text
    args = build_parser().parse_args(
        ["pairs-from-qrels", "--index", "i", "--queries", "q", "--qrels", "r", "--output", "o", "--negatives", "5"]
    )
    assert resolve(PairsFromQrelsConfig, args).negative_count == 5
    flywheel = resolve(
        FlywheelConfig,
        {"corpus": ["c"], "queries": "q", "train_qrels": "t", "mine": {"negatives": "since-last-positive"}},
    )
    assert flywheel.stage_config("mine", input=["r"], output="m").negative_mode == "since-last-positive"
    config.write_text("input: [a]\noutput: o\nnegatives: attributed\nnegative_mode: attributed\n")
    with pytest.raises(LratError, match="both 'negatives' and its new name 'negative_mode'"):
        resolve(MineConfig, {}, str(config))


def test_a_validated_config_is_frozen():
    import dataclasses

    config = MineConfig(input=["a"], output="o")
    with pytest.raises(dataclasses.FrozenInstanceError, match="MineConfig.workers: a validated config is frozen"):
        config.workers = 3
    assert dataclasses.replace(config, workers=3).workers == 3 and config.workers is None
    with pytest.raises(ValueError, match="minimum 1"):
        dataclasses.replace(config, workers=0)  # a replaced config is validated again


def test_choices_are_enforced_in_yaml_and_in_every_flywheel_section(tmp_path):
    from lrat_ray.experiments.flywheel import FlywheelConfig
    from lrat_ray.stages.judge import JudgeConfig

    config = tmp_path / "c.yaml"
    config.write_text("judge:\n  pairs: p\n  output: o\n  backend: vlm\n")
    with pytest.raises(LratError, match=r"option backend \(--backend\): 'vlm' is not one of"):
        resolve(JudgeConfig, {}, str(config), "judge")
    base = {"corpus": ["c"], "queries": "q", "train_qrels": "t"}
    for section, value, named in (
        ("judge", {"backend": "vlm"}, "backend"),
        ("mine", {"negatives": "random"}, "negative_mode"),
        ("train", {"backend": "horovod"}, "backend"),
        ("agent", {"kind": "robot"}, "kind"),
        ("train", {"learning_rat": 1}, "unknown option.*learning_rat"),
        ("train", {"pairs": ["x"]}, r"\['pairs'\] are set by FlywheelConfig"),
        ("index", {"index_type": "lsh"}, "index_type"),
        ("index", {"batch_size": 0}, "batch_size.*minimum 1"),
        ("agent_llm", {"modle": "x"}, "modle"),
    ):
        with pytest.raises(LratError, match=f"flywheel section {section}: .*{named}"):
            resolve(FlywheelConfig, {**base, section: value})


def test_flywheel_sections_become_typed_stage_configs_over_the_flywheel_defaults(tmp_path):
    from lrat_ray.experiments.flywheel import FlywheelConfig
    from lrat_ray.infra.stage_run import content_of
    from lrat_ray.stages.index import IndexConfig

    base = {"corpus": ["c"], "queries": "q", "train_qrels": "t", "output": str(tmp_path), "document_max_length": 64}
    config = resolve(
        FlywheelConfig,
        {**base, "index": {"bf16": True}, "judge": {"backend": "none"}, "resources": {"index": {"cpu_stage": 1}}},
    )
    index = config.stage_config("index", output="o", model="m")
    assert isinstance(index, IndexConfig)
    assert (index.workers, index.bf16, index.document_max_length, index.resources, index.model) == (
        2,
        True,
        64,
        {"cpu_stage": 1},
        "m",
    )
    assert config.stage_config("judge", output="j", pairs="p").backend == "none"
    assert config.stage_config("mine", input=["r"], output="m").workers == 1
    assert config.stage_config("train", pairs=["p"], output="t", model="m").document_max_length == 64
    llm = {"kind": "llm"}
    assert resolve(FlywheelConfig, {**base, "agent": llm}).serves_agent_llm
    assert not resolve(FlywheelConfig, {**base, "agent": {**llm, "endpoint": "http://h:1/v1"}}).serves_agent_llm
    assert not config.serves_agent_llm and not config.judges_events
    # Runtime options in a section (workers) leave the flywheel's version key alone; others change it.
    more_workers = resolve(
        FlywheelConfig, {**base, "index": {"bf16": True, "workers": 8}, "judge": {"backend": "none"}}
    )
    assert content_of(more_workers)["index"] == content_of(config)["index"] == {"bf16": True}
    for name in ("c", "q", "t"):
        (tmp_path / name).write_text("")
    present = {
        **base,
        "corpus": [str(tmp_path / "c")],
        "queries": str(tmp_path / "q"),
        "train_qrels": str(tmp_path / "t"),
    }
    check_inputs(resolve(FlywheelConfig, present))
    with pytest.raises(LratError, match="section train, option deepspeed_config: .*nowhere.json does not exist"):
        check_inputs(
            resolve(FlywheelConfig, {**present, "train": {"deepspeed_config": str(tmp_path / "nowhere.json")}})
        )


def test_shipped_training_recipes_load():
    from lrat_ray.stages.train import CONFIG_DIR, TrainConfig

    with pytest.raises(LratError, match="requires --corpus"):
        resolve(
            TrainConfig,
            {"pairs": ["p"], "output": "o"},
            str(CONFIG_DIR / "train_lrat_qwen3_embedding_0.6b.yaml"),
            "train",
        )
    paper = resolve(
        TrainConfig,
        {"pairs": ["p"], "output": "o", "corpus": ["c"]},
        str(CONFIG_DIR / "train_lrat_qwen3_embedding_0.6b.yaml"),
        "train",
    )
    assert (paper.model, paper.pooling, paper.temperature, paper.group_size, paper.epochs) == (
        "Qwen/Qwen3-Embedding-0.6B",
        "last",
        0.02,
        10,
        2,
    )
    assert paper.query_prefix.endswith("\nQuery:") and paper.learning_rate == 1e-6
    cpu = resolve(
        TrainConfig,
        {"pairs": ["p"], "output": "o", "corpus": ["c"]},
        str(CONFIG_DIR / "train_cpu_minilm.yaml"),
        "train",
    )
    assert cpu.model == "embedded" and cpu.workers == 2

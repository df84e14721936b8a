"""The ``lrat`` command: one subcommand per stage.

Each subcommand takes ``--config YAML`` (a mapping of its options, or a file with one section per
subcommand) and per-option overrides; ``lrat <stage> --help`` lists them. The pipeline stages
(``mine``, ``judge``, ``pairs-from-qrels``, ``train``, ``index``, ``eval``, ``eval-runs``,
``rollout``, ``flywheel``) come from the registry in :mod:`lrat_ray.registry` and run under
:func:`lrat_ray.infra.stage_run.run_stage`: versioned (``{version}`` in ``--output``), immutable, skipped
when already finished; ``jobs/<stage>.py`` runs the same as a Ray job. Beside them: ``serve``,
``mcp``, ``ablation``, ``demo`` and ``prepare-llm``.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
import time
from pathlib import Path

from lrat_ray import __version__
from lrat_ray.infra.config import add_arguments, check_inputs, resolve
from lrat_ray.infra.errors import LratError
from lrat_ray.registry import STAGES

log = logging.getLogger("lrat")


SIMULATION_ASSUMPTIONS = """  what the simulation assumes: the agent picks what to read from the claim's words in each
  result's title and snippet (plus a weak position bias), so it also reads documents that only
  look relevant; its note after reading stands in for reading comprehension: long and quoting
  when SciFact's judgments call the abstract relevant, short and often dismissive otherwise (so
  the notes carry the signal LRAT's judge and weights read by construction: an input, not a
  finding). Intervals: 95% bootstrap over the held-out claims of this one run; they leave out
  training and rollout noise (one seed), so they cannot show an effect of the method. For that,
  with seeds, a control agent and tests sized by a pilot: `lrat ablation` (README)."""


def _shared_data() -> Path:
    """Where the project's real data sets live: ``LRAT_DATA`` or ``../shared/data`` from here."""
    return Path(os.environ.get("LRAT_DATA", Path.cwd().parent / "shared" / "data"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrat", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"lrat-ray {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log debug messages and show Ray's own logs (else in /tmp/ray/session_latest/logs)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, cls, module, handler, summary in commands():
        command = sub.add_parser(
            name,
            help=summary,
            description=_first_paragraph(module),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_argument("--config", help=f"YAML file with these options (a '{name}:' section or top level)")
        add_arguments(command, cls)
        command.set_defaults(handler=handler, config_class=cls)

    demo = sub.add_parser("demo", help="the LRAT flywheel on SciFact with the embedded default (see README)")
    demo.add_argument("--output", default="runs/demo", help="where the demo writes (default: runs/demo)")
    demo.add_argument("--data", default=None, help="shared data directory (default: $LRAT_DATA or ../shared/data)")
    demo.add_argument(
        "--llm",
        action="store_true",
        help="one iteration with real LLM agents (Ray Serve LLM) and the vLLM judge, on the tiny "
        "embedded chat model (configs/demo_flywheel_llm.yaml)",
    )
    demo.set_defaults(handler=_cmd_demo)

    prepare = sub.add_parser(
        "prepare-llm",
        help="build the embedded chat model (SmolLM2-135M-Instruct) for vLLM",
        description=_first_paragraph("lrat_ray.models.tiny_llm"),
    )
    prepare.set_defaults(handler=_cmd_prepare_llm)
    return parser


def commands():
    """(name, config class, module, handler, help) of every subcommand that takes a config: the
    registered stages (:mod:`lrat_ray.registry`), then the long-running services and the ablation."""
    from lrat_ray.experiments.ablation import AblationConfig
    from lrat_ray.serving.config import ServeConfig
    from lrat_ray.serving.mcp import McpConfig

    staged = [(s.name, s.config_class(), s.module, _cmd_stage, s.help) for s in STAGES.values()]
    return staged + [
        ("serve", ServeConfig, "lrat_ray.serving.retriever", _cmd_serve, "serve search + browse over HTTP (Ray Serve)"),
        ("mcp", McpConfig, "lrat_ray.serving.mcp", _cmd_mcp, "offer a running retriever's tools over MCP"),
        (
            "ablation",
            AblationConfig,
            "lrat_ray.experiments.ablation",
            _cmd_ablation,
            "oracle / naive / LRAT arms on common random numbers, informative and control agents, seed-level tests",
        ),
    ]


def _first_paragraph(module: str) -> str:
    import importlib

    return (importlib.import_module(module).__doc__ or "").strip().split("\n\n")[0]


def _section(path: str | None, name: str) -> str | None:
    """The YAML section to use: ``name`` when the file has one, else the whole file."""
    if not path:
        return None
    from lrat_ray.infra.config import load_yaml

    return name if name in load_yaml(path) else None


def _config(args: argparse.Namespace):
    """The command's config from defaults, YAML and the command line, its inputs checked to exist."""
    config = resolve(args.config_class, args, args.config, _section(args.config, args.command))
    check_inputs(config)
    return config


def _cmd_stage(args: argparse.Namespace) -> int:
    """Any registered stage: under :func:`lrat_ray.infra.stage_run.run_stage` (versioned, immutable output; a
    finished run is not repeated), one line when it starts and one with what it did."""
    from lrat_ray.infra.stage_run import run_stage

    stage = STAGES[args.command]
    config = _config(args)
    print(f"lrat {stage.name}: started", flush=True)
    started = time.time()
    if stage.output_optional and not config.output:
        result = stage.run()(config)
        print(f"lrat {stage.name}: {stage.summary(result)}; {time.time() - started:.0f}s")
    else:
        staged = run_stage(stage.name, config, stage.run(), local_only=stage.local_only)
        result, config = staged.result, dataclasses.replace(config, output=staged.output)
        if staged.skipped:
            print(
                f"lrat {stage.name}: {staged.output} already holds this result (version {staged.key}): "
                f"{stage.summary(result)}; nothing was run"
            )
        else:
            print(
                f"lrat {stage.name}: {stage.summary(result)}; {time.time() - started:.0f}s -> {staged.output} "
                f"(version {staged.key})"
            )
    details = DETAILS.get(stage.name)
    if details:
        details(result, config)
    return 0


def _eval_details(result: dict, config) -> None:
    names = sorted(result["metrics"])
    if "compare" in result:
        other = result["compare"]["metrics"]
        print(f"  {'metric':<22} {'A':>8} {'B':>8}")
        for name in names:
            print(f"  {name:<22} {result['metrics'][name]:>8.4f} {other.get(name, float('nan')):>8.4f}")
        for metric, test in result["compare"]["tests"].items():
            print(
                f"  {metric}: B wins {test['wins_b']}, loses {test['losses_b']}, ties {test['ties']}; "
                f"paired t-test p={test['t_test_p']:.4g}, permutation p={test['permutation_p']:.4g}"
            )
    else:
        for name in names:
            print(f"  {name:<22} {result['metrics'][name]:.4f}")


def _eval_runs_details(result: dict, config) -> None:
    for key in (
        "tasks",
        "tasks_with_evidence",
        "evidence_recall",
        "gold_recall",
        "avg_steps",
        "avg_searches",
        "avg_browses",
        "success_rate",
        "records_skipped",
    ):
        print(f"  {key:<20} {result[key]}")


def _flywheel_details(rows: list, config) -> None:
    from lrat_ray.experiments.flywheel import results_table

    print("\n" + results_table(rows))
    print(f"wrote {config.output}/results.md, results.csv and results.png")


def _cmd_serve(args: argparse.Namespace) -> int:
    from lrat_ray.serving.retriever import deploy, swap_running, wait_for_interrupt

    config = _config(args)
    if config.swap:
        url = swap_running(config)
        print(f"lrat serve: {url} now serves {config.index}")
        return 0
    url = deploy(config)  # returns once every replica answers, or fails naming what is missing
    print(f"serving {config.index} on {url} (Ctrl-C stops)", flush=True)
    wait_for_interrupt()
    return 0


def _cmd_prepare_llm(args: argparse.Namespace) -> int:
    from lrat_ray.models.tiny_llm import tiny_model_path

    print(tiny_model_path())
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    import os

    from lrat_ray.experiments.ablation import render_markdown, render_pilot, run_ablation

    config = _config(args)
    report = run_ablation(config)
    if config.pilot:
        print(render_pilot(report))
        print(f"pilot report.json and results.md in {os.path.join(config.output, 'pilot')}")
        return 0
    print(render_markdown(report))
    print(f"wall time {report['wall_seconds']:.0f}s; report.json, results.md and results.png in {config.output}")
    return 0


def _cmd_mcp(args: argparse.Namespace) -> int:
    from lrat_ray.serving.mcp import run_mcp

    config = _config(args)
    print(f"MCP tools search/get_document for {config.url} at http://{config.host}:{config.port}/mcp")
    run_mcp(config)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """The flywheel on SciFact with the embedded default; see lrat_ray/configs/demo_flywheel.yaml."""
    import time

    from lrat_ray.experiments.flywheel import FlywheelConfig, results_table, run_flywheel
    from lrat_ray.infra.config import load_yaml

    data = Path(args.data) if args.data else _shared_data()
    if not (data / "scifact-beir" / "corpus.jsonl").is_file():
        raise LratError(f"demo data not found under {data}; set LRAT_DATA or --data")
    recipe = "demo_flywheel_llm.yaml" if args.llm else "demo_flywheel.yaml"
    values = load_yaml(str(Path(__file__).with_name("configs") / recipe))["flywheel"]
    for key in ("queries", "train_qrels", "heldout_qrels"):
        values[key] = str(data / values[key])
    values["corpus"] = [str(data / c) for c in values["corpus"]]
    values["output"] = args.output
    config = FlywheelConfig(**values)
    print(
        f"lrat demo: {config.iterations}-iteration LRAT flywheel on SciFact ({data / 'scifact-beir'}) "
        f"-> {args.output}\n  retriever: embedded all-MiniLM-L6-v2; "
        + (
            "agents: SmolLM2-135M-Instruct on Ray Serve LLM; judge: the same model on ray.data.llm vLLM; "
            if args.llm
            else "agent: simulated; judge: keyword rule; "
        )
        + "local Ray on CPU"
    )
    if not args.llm:
        print(SIMULATION_ASSUMPTIONS)
    started = time.time()
    rows = run_flywheel(config)
    print("\nheld-out results per iteration (iteration 0 = before any training):\n")
    print(results_table(rows))
    first, last = rows[0], rows[-1]
    print(
        f"evidence recall {first['evidence_recall']:.4f} -> {last['evidence_recall']:.4f}, "
        f"nDCG@10 {first['ndcg@10']:.4f} -> {last['ndcg@10']:.4f}, "
        f"success rate {first['success_rate']:.4f} -> {last['success_rate']:.4f}, "
        f"steps/task {first['avg_steps']:.2f} -> {last['avg_steps']:.2f}"
    )
    print(f"wall time {time.time() - started:.0f}s; table, CSV and plot in {args.output}/results.*")
    return 0


def _mine_details(report: dict, config) -> None:
    print(
        f"  skipped records by reason: {report['records_skipped'] or 'none'}; duplicate browses "
        f"{report['duplicate_browses']}"
    )
    print(f"weights: beta (median reasoning length) = {report['beta']:.1f}, mu_raw = {report['mu_raw']:.4f}")
    print("\nagent behaviour (LRAT Table 1):")
    print(f"  {'group':<10} {'traj':>5} {'search/t':>9} {'browse/t':>9} {'steps/t':>8} {'B/S':>6}")
    for group in ("all", "correct", "incorrect", "unjudged"):
        row = report["stats"][group]
        if not row["trajectories"]:
            continue
        print(
            f"  {group:<10} {row['trajectories']:>5} {row['avg_searches']:>9.2f} {row['avg_browses']:>9.2f} "
            f"{row['avg_steps']:>8.2f} {row['browse_search_ratio'] or 0:>6.3f}"
        )
    ranks = report["stats"]["browsed_rank_distribution"]
    print("  browsed ranks: " + ", ".join(f"{r}:{v['count']}" for r, v in ranks.items()))
    for example in report.get("skipped_examples", [])[:5]:
        print(f"  skipped: {example}")
    print(f"\nwrote {config.output}/pairs/*.parquet and {config.output}/report.json")


DETAILS = {"mine": _mine_details, "eval": _eval_details, "eval-runs": _eval_runs_details, "flywheel": _flywheel_details}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # it reports every CPU-specific build it lacks
    for chatty in ("httpx", "httpcore"):  # one INFO line per HTTP request
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from lrat_ray.infra.runtime import quiet_ray_console

    quiet_ray_console(not args.verbose)
    try:
        return args.handler(args)
    except LratError as exc:
        print(f"lrat {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lrat {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or a failure inside Ray: the cause in one line, the rest in a file
        if args.verbose:
            raise
        where = _save_traceback(args.command)
        print(f"lrat {args.command}: error: {root_cause(exc)} (full traceback: {where}; -v prints it)", file=sys.stderr)
        return 1


_EXCEPTION_LINE = re.compile(r"^((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*(?:Error|Exception|Interrupt)): (.+)$")


def root_cause(exc: BaseException) -> str:
    """``Type: first line`` of the innermost cause: a Ray task error wraps the exception that
    failed the task (``.cause``), other errors chain theirs (``__cause__``). Where Ray could only
    pass the remote traceback on as text (Ray Data's UserCodeException), the first exception line
    of that text, which is the innermost one."""
    outer, seen = exc, set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    if type(exc).__module__.startswith("ray."):
        for line in str(outer).splitlines():
            found = _EXCEPTION_LINE.match(line.strip())
            if found and not found.group(1).startswith("ray."):
                return f"{found.group(1).rsplit('.', 1)[-1]}: {found.group(2)}"
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _save_traceback(command: str) -> str:
    """The current exception's traceback in ``$LRAT_LOGS`` (default ``~/.cache/lrat/logs``)."""
    import traceback

    directory = Path(os.environ.get("LRAT_LOGS", Path.home() / ".cache" / "lrat" / "logs"))
    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"lrat-{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        path.write_text(traceback.format_exc())
        return str(path)
    except OSError:
        traceback.print_exc()
        return "printed above"


if __name__ == "__main__":
    sys.exit(main())

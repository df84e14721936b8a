"""Progress lines of long stages (lrat_ray/infra/progress.py) and one-line errors of the lrat command."""

import logging
import re
import time

from lrat_ray.infra.progress import Progress


def test_log_lines_report_done_rate_and_time_left_and_keep_coming_while_nothing_finishes(caplog):
    with caplog.at_level(logging.INFO, logger="lrat.progress"):
        with Progress("mine", 4, "groups", every_s=0.2, terminal=False) as progress:
            time.sleep(0.5)  # one long group: still a line (or two) saying how long it has been
            assert re.search(r"mine: 0/4 groups \(0%\), 0\.00 groups/s, elapsed \d+s", caplog.text)
            progress.update(1, records=1200)
            time.sleep(0.25)
            progress.update(1, records=800)
    last = caplog.records[-1].getMessage()
    assert re.fullmatch(r"mine: 2/4 groups \(50%\), 2,000 records, [0-9.]+ groups/s, elapsed \d+s, ~\d+s left", last), (
        last
    )


def test_values_from_a_report_replace_and_counts_add(caplog):
    with caplog.at_level(logging.INFO, logger="lrat.progress"):
        with Progress("train", 10, "steps", every_s=60, terminal=False) as progress:
            progress.set(3, loss=0.7)
            progress.set(7, loss=0.25)
    assert "train: 7/10 steps (70%), loss 0.25," in caplog.records[-1].getMessage()


def test_an_unexpected_error_is_one_line_with_its_cause_and_the_traceback_in_a_file(tmp_path, monkeypatch, capsys):
    from lrat_ray import cli

    def broken(args):
        try:
            raise KeyError("the shard map")
        except KeyError as inner:
            raise RuntimeError("the task failed") from inner

    monkeypatch.setenv("LRAT_LOGS", str(tmp_path))
    monkeypatch.setattr(cli, "build_parser", _parser_with(cli, broken))
    assert cli.main(["prepare-llm"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lrat prepare-llm: error: KeyError: 'the shard map' (full traceback: ")
    saved = next(tmp_path.glob("lrat-prepare-llm-*.log")).read_text()
    assert "RuntimeError: the task failed" in saved and "KeyError" in saved


def _parser_with(cli, handler):
    build = cli.build_parser

    def parser():
        built = build()
        for action in built._subparsers._group_actions:
            action.choices["prepare-llm"].set_defaults(handler=handler)
        return built

    return parser


def test_the_cause_of_a_failed_ray_data_task_is_the_users_exception(ray_session):
    """Ray Data passes a task's exception back only as traceback text (UserCodeException): the one
    line names the exception raised in the task, not Ray's wrapper."""
    import pytest

    from lrat_ray.cli import root_cause

    def boom(row):
        raise KeyError("the shard map")

    with pytest.raises(Exception) as info:
        ray_session.data.range(2).map(boom).take_all()
    assert root_cause(info.value) == "KeyError: 'the shard map'"

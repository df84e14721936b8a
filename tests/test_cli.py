"""Every subcommand fails in one line, with exit status 2 and before starting Ray, on a missing input."""

import dataclasses

import pytest

from lrat_ray.cli import commands, main


def _stage_inputs():
    for name, cls, *_ in commands():
        paths = [f for f in dataclasses.fields(cls) if f.metadata.get("path")]
        if paths:
            yield pytest.param(name, cls, id=name)


@pytest.mark.parametrize("name,cls", list(_stage_inputs()))
def test_every_subcommand_names_a_missing_input_and_exits_2_before_ray(name, cls, tmp_path, capsys, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("Ray was started before the inputs were checked")

    monkeypatch.setattr("lrat_ray.infra.runtime.init_ray", no_ray)
    monkeypatch.setattr(ray, "init", no_ray)
    missing = tmp_path / "missing-input"
    argv = [name]
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        flag = "--" + f.name.replace("_", "-")
        if f.metadata.get("path") and f.name not in (
            "model",
            "tokenizer",
            "labels",
            "events",
            "compare",
            "qrels",
            "heldout_qrels",
            "evidence",
            "gold",
        ):
            argv += [flag, str(missing)]
        elif required:
            argv += [flag, "http://127.0.0.1:9" if f.name == "url" else str(tmp_path / f.name)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(missing) in err and "does not exist" in err, err
    assert not (tmp_path / "output").exists()

"""Typed configuration: dataclasses, loadable from YAML, overridable from the command line.

Each stage has one dataclass whose fields carry their help text (``field(metadata={"help": ...})``,
as Tevatron and Hugging Face do). :func:`add_arguments` turns it into ``--kebab-case`` options;
:func:`resolve` builds the instance with precedence *defaults < YAML file (--config) < command
line*, rejecting YAML keys the dataclass does not have (a typo must not be ignored silently).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import yaml

from lrat_ray.infra.errors import LratError

T = TypeVar("T")
log = logging.getLogger(__name__)


def option(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    choices: tuple | None = None,
    minimum: float | None = None,
    runtime: bool = False,
    path: bool = False,
    convert: Callable[[Any], Any] | None = None,
    default_text: str | None = None,
    old_names: tuple[str, ...] = (),
    **kwargs,
):
    """A dataclass field with help text (and optional choices or minimum) for the command line.

    ``choices`` and ``minimum`` are enforced whenever a :func:`checked` config is built.
    ``runtime`` marks a field that changes how a stage runs but not what it writes (workers,
    resources, addresses): it is left out of the stage's version key. ``path`` marks an input
    path (or list of them) whose content goes into that key (see :mod:`lrat_ray.infra.stage_run`).
    ``convert`` normalises a value given in another form (``bf16: auto`` in YAML) when a
    :func:`checked` config is built; ``default_text`` is how ``--help`` names the default.
    ``old_names``: earlier names of the option, still read from YAML (with a deprecation message)
    and the command line.
    """
    metadata = {
        "help": help,
        "choices": choices,
        "minimum": minimum,
        "runtime": runtime,
        "path": path,
        "convert": convert,
        "default_text": default_text,
        "old_names": tuple(old_names),
    }
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def section(config_class: Callable[[], type], *, set_by: tuple[str, ...] = (), help: str):
    """A nested section: options of another stage's config (``config_class()``, a callable so the
    owner need not import every stage up front), as a YAML mapping or JSON on the command line.
    The owner builds the typed config from it (see :func:`build_section`); ``set_by`` are the
    options the owner sets itself (inputs, outputs) and a section may not."""
    field = option({}, help=help)
    field.metadata = types.MappingProxyType({**field.metadata, "section": config_class, "set_by": set_by})
    return field


def build_section(owner: Any, name: str, defaults: dict):
    """``owner``'s section ``name`` as its typed config: ``defaults`` (what the owner sets there),
    then the section's own options, checked to be options of that config that the owner does not
    set itself."""
    f = next(f for f in dataclasses.fields(owner) if f.name == name)
    config_class, set_by = f.metadata["section"](), set(f.metadata["set_by"])
    values = renamed(config_class, getattr(owner, name), f"section {name}")
    known = {g.name for g in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted(known - set_by)}")
    owned = sorted(set(values) & set_by)
    if owned:
        raise ValueError(f"option(s) {owned} are set by {type(owner).__name__} itself")
    return config_class(**{**defaults, **values})


def renamed(config_class: type, values: dict, where: str) -> dict:
    """``values`` with options given under an old name (``option(old_names=...)``) under the new
    one, each named in a deprecation message; both names at once is an error."""
    old = {o: f.name for f in dataclasses.fields(config_class) for o in f.metadata.get("old_names", ())}
    out = dict(values)
    for name in sorted(set(values) & set(old)):
        new = old[name]
        if new in values:
            raise LratError(f"{where}: both {name!r} and its new name {new!r} are given; keep {new!r}")
        log.warning("%s: option %r is now called %r; the old name still works but will go", where, name, new)
        out[new] = out.pop(name)
    return out


def runtime_options(config_class: type) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class) if f.metadata.get("runtime")}


def checked(cls: type[T]) -> type[T]:
    """Class decorator (put it under ``@dataclass``): every instance checks its ``choices`` and
    ``minimum`` values when it is built, wherever the values came from (command line, YAML, a
    flywheel section, Python), then runs the class's own ``__post_init__`` checks, and is frozen
    from then on: a validated config is never changed in place (``dataclasses.replace`` makes a
    new one, validated again), so what a stage recorded is what it ran with."""
    own = cls.__dict__.get("__post_init__")

    def __post_init__(self):
        check_values(self)
        if own is not None:
            own(self)
        object.__setattr__(self, "_validated", True)

    def __setattr__(self, name, value):
        if self.__dict__.get("_validated"):
            raise dataclasses.FrozenInstanceError(
                f"{type(self).__name__}.{name}: a validated config is frozen; use dataclasses.replace"
            )
        object.__setattr__(self, name, value)

    cls.__post_init__ = __post_init__
    cls.__setattr__ = __setattr__
    return cls


def check_values(config: Any) -> None:
    for f in dataclasses.fields(config):
        choices, minimum = f.metadata.get("choices"), f.metadata.get("minimum")
        value = getattr(config, f.name)
        if f.metadata.get("convert") is not None:
            try:
                value = f.metadata["convert"](value)
            except ValueError as exc:
                raise ValueError(f"option {f.name} (--{f.name.replace('_', '-')}): {exc}") from None
            object.__setattr__(config, f.name, value)
        if value is None:
            continue
        if choices and value not in choices:
            raise ValueError(f"option {f.name} (--{f.name.replace('_', '-')}): {value!r} is not one of {list(choices)}")
        if minimum is not None and value < minimum:
            raise ValueError(
                f"option {f.name} (--{f.name.replace('_', '-')}): {value!r} is below the minimum {minimum}"
            )


# Option groups shared by the stage configs (dataclass bases, keyword-only so that a stage's own
# required options keep their place): declared once here, flat on the command line and in YAML.


@dataclasses.dataclass(kw_only=True)
class RayCluster:
    """Where a stage runs."""

    address: str | None = option(None, help="Ray cluster address; default RAY_ADDRESS, else a local Ray", runtime=True)


@dataclasses.dataclass(kw_only=True)
class ActorPool(RayCluster):
    """How a stage fans out over Ray actors, and what each actor reserves."""

    workers: int | None = option(
        None,
        minimum=1,
        runtime=True,
        help="actors working in parallel; default: as many as the cluster's resources hold",
    )
    cpus_per_worker: float = option(1.0, minimum=0, help="CPUs each actor reserves", runtime=True)
    resources: dict = option(
        {}, help="custom resources per actor, e.g. {\"cpu_stage\": 1} to keep the stage on one node group", runtime=True
    )


MODEL_FIELDS = ("model", "tokenizer")  # may name a Hugging Face model or 'embedded'/'tiny' instead of a path


def check_inputs(config: Any) -> None:
    """Raise :class:`LratError` naming the option and the path of the first local input that does
    not exist, so a command fails in one line before it starts Ray or any work. Remote URIs and
    globs are left to the stage (checking them may need credentials or a listing)."""
    for name, value, where in _path_options(config):
        for path in value if isinstance(value, list) else [value]:
            if _missing_local_path(name, path):
                raise LratError(f"{where}: {path} does not exist")


def _path_options(config: Any):
    """(name, value, how to name it) of every path option, those in sections included."""
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata.get("path"):
            yield f.name, value, "--" + f.name.replace("_", "-")
        elif f.metadata.get("section"):
            paths = {g.name for g in dataclasses.fields(f.metadata["section"]()) if g.metadata.get("path")}
            for name in sorted(paths & set(value)):
                yield name, value[name], f"section {f.name}, option {name}"


def _missing_local_path(name: str, path: Any) -> bool:
    from lrat_ray.infra import storage

    if not isinstance(path, str) or not path or storage.is_remote(path) or any(c in path for c in "*?["):
        return False  # remote URIs and globs are the stage's to check (credentials, listings)
    if "{version}" in path or os.path.exists(path):
        return False
    return not (name in MODEL_FIELDS and not path.startswith((".", "/", "~")))  # else a model name


def _json_mapping(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"expected a JSON object, e.g. '{{\"cpu_stage\": 1}}': {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object, e.g. '{\"cpu_stage\": 1}'")
    return value


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of ``cls`` (its own options first, then the shared groups it inherits);
    unset options stay absent so YAML values survive."""
    hints = typing.get_type_hints(cls)
    own = cls.__dict__.get("__annotations__", {})
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
        tp = _unwrap_optional(hints[f.name])
        flags = ["--" + n.replace("_", "-") for n in (f.name, *f.metadata.get("old_names", ()))]
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": _help_with_default(f)}
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif tp is dict:
            kwargs["type"] = _json_mapping
            kwargs["metavar"] = "JSON"
        elif typing.get_origin(tp) is list:
            kwargs["nargs"] = "+"
            kwargs["type"] = typing.get_args(tp)[0]
        else:
            kwargs["type"] = tp
        parser.add_argument(*flags, **kwargs)


def _help_with_default(f: dataclasses.Field) -> str:
    text = f.metadata.get("help", "")
    if f.metadata.get("default_text"):
        return f"{text} (default: {f.metadata['default_text']})"
    if f.default is not dataclasses.MISSING:
        return f"{text} (default: {f.default})"
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
        return f"{text} (default: {default or 'none'})"
    return f"{text} (required)"


def load_yaml(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LratError(f"cannot read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise LratError(f"config {path}: expected a mapping of option names to values")
    return data


def resolve(
    cls: type[T],
    namespace: argparse.Namespace | dict | None = None,
    config_path: str | None = None,
    section: str | None = None,
) -> T:
    """Build ``cls`` from defaults, then the YAML file (optionally one ``section`` of it), then
    the command-line values in ``namespace``."""
    values: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    if config_path:
        data = load_yaml(config_path)
        if section is not None:
            data = data.get(section, {}) or {}
        values.update(_checked_yaml(data, cls, config_path))
    given = vars(namespace) if isinstance(namespace, argparse.Namespace) else (namespace or {})
    values.update({k: v for k, v in given.items() if k in names})
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in values and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]  # type: ignore[misc]
    if missing:
        raise LratError("missing required option(s): " + ", ".join("--" + m.replace("_", "-") for m in missing))
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise LratError(f"invalid configuration: {exc}") from None


def _checked_yaml(data: dict, cls: type, path: str) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    normalised = renamed(cls, {str(k).replace("-", "_"): v for k, v in data.items()}, f"config {path}")
    unknown = sorted(set(normalised) - names)
    if unknown:
        raise LratError(f"config {path}: unknown option(s) {unknown}; known: {sorted(names)}")
    return normalised


def to_dict(config: Any) -> dict:
    return dataclasses.asdict(config)

"""The command line of a run's config: one ``--field-name`` flag per config field, and the parsing that
every experiment and ``siamax train`` share (:func:`command_line`).

``--learning-rate`` sets ``optim.learning_rate``: a flag is a field's flat name (``siamax.config``),
its default the chosen preset's value (shown by ``--help``); a flag not given leaves the preset's
value, through ``Config.override`` (which also drops what the new config would not read).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

import jax

from siamax import presets, sharding
from siamax.config import FIELDS, Config, applies
from siamax.model import MODELS, param_count


def models_help() -> str:
    """Each registered model with its parameter count at its own input size (computed from its spec)."""
    return "; ".join(
        f"{name}: {param_count(spec):,} parameters, {spec.tower} tower, {spec.input_size}x{spec.input_size}"
        + (", attention pooling" if spec.pooling == "attention" else "")
        for name, spec in MODELS.items()
    )


def add_arguments(parser: argparse.ArgumentParser, preset: str) -> None:
    """One ``--field-name`` flag per field; ``--help`` shows ``preset``'s value as each default."""
    cfg = presets.PRESETS[preset].flat()
    group = parser.add_argument_group(f"config (defaults: the {preset!r} preset's values)")
    for name, f in FIELDS.items():
        kind = {bool: _bool, int: int, float: float}.get(type(f.default), str)
        shown = f"[{preset}: {cfg[name]!r}]" if applies(name, cfg) else f"[not read by {preset}]"
        if name == "model":
            shown = f"({models_help()}) {shown}"
        elif f.metadata.get("choices"):
            shown = f"(one of {', '.join(map(str, f.metadata['choices']))}) {shown}"
        group.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            type=kind,
            default=None,
            choices=f.metadata.get("choices"),
            metavar=name.upper(),
            help=f"{f.metadata['help']} {shown}".replace("%", "%%"),
        )


_config_arguments = add_arguments  # command_line's keyword add_arguments (the command's own flags) hides it


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def positive_ints(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated integers >= 1 ("1,4")."""
    return tuple(positive_int(part) for part in text.split(","))


def from_args(args: argparse.Namespace, preset: str) -> Config:
    """The preset with every flag the user gave applied."""
    given = {name: getattr(args, name) for name in FIELDS if getattr(args, name, None) is not None}
    return presets.config(preset, **given)


def margin_line(args: argparse.Namespace, preset: str, cfg: Config) -> str | None:
    """The margin a contrastive or triplet run uses and where it comes from (None for other objectives)."""
    if cfg.objective.kind not in ("contrastive", "triplet"):
        return None
    if getattr(args, "margin", None):
        source = "given"
    elif cfg.objective.margin:
        source = f"the {preset} preset's; --margin to change"
    else:
        source = f"the {cfg.model.energy} energy's default; --margin to change"
    return f"margin {cfg.margin} ({source})"


def command_line(
    prog: str,
    doc: str,
    argv: Sequence[str] | None,
    *,
    task: str,
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
    task_of: Callable[[argparse.Namespace], tuple[str, str]] | None = None,
) -> tuple[argparse.Namespace, str, Config]:
    """Parse a command line of ``task`` (a name in ``presets.TASKS``): ``(args, preset, config)``.

    In this order, because each step needs the one before: the multi-process start-up (before
    anything asks JAX about devices), then ``--preset`` (its default, ``presets.default_preset(task)``,
    may depend on the backend), then the full parser, whose ``--help`` shows that preset's values as
    the defaults. ``add_arguments(parser)`` adds the command's own flags. ``task_of(args)``, when given,
    tells the task from the parsed command line (``siamax train``: from what the data folder holds) as
    ``(task, what)``; without ``--preset`` its default preset is used and ``what`` said with it (``--help``
    shows ``task``'s).
    """
    early = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    early.add_argument("--preset", choices=presets.preset_names(), default=None)
    sharding.add_arguments(early)
    known, _ = early.parse_known_args(argv)
    sharding.initialize_from_args(known)
    default = presets.default_preset(task)
    preset = known.preset or default

    parser = argparse.ArgumentParser(
        prog=prog, description=doc, allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        choices=presets.preset_names(),
        default=None,
        help=f"named config (default here: {default}); --preset NAME --help shows NAME's values",
    )
    if add_arguments:
        add_arguments(parser)
    sharding.add_arguments(parser)
    _config_arguments(parser, preset)
    args = parser.parse_args(argv)
    what = ""
    if known.preset is None and task_of is not None:
        task, what = task_of(args)
        preset = presets.default_preset(task)
    cfg = from_args(args, preset)
    if sharding.is_primary():
        if known.preset is None:
            why = f" for {what}" if what else ""
            print(f"no --preset given: using {preset!r}{why} on this {jax.default_backend()} machine")
        line = margin_line(args, preset, cfg)
        if line:
            print(line)
    return args, preset, cfg

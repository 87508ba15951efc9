"""Settings that are also command-line options: each one's default, help text and flag written once, on its field.

A configuration dataclass (:class:`ferkit.training.TrainConfig`,
:class:`ferkit.augmentation.Augmentation`) declares such a setting with
:func:`option`; the command line builds its argparse options from these
fields (:func:`add_options`) and the settings from the parsed options
(:func:`with_options`), so ``--help`` shows the defaults that training uses.
Fields declared with a plain ``field`` or a bare default have no option.
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, field, fields, is_dataclass, replace
from typing import Any, Callable, get_args, get_type_hints


def option(default: Any = MISSING, *, flag: str, help: str, factory: Callable[[], Any] | Any = MISSING,
           convert: Callable[[Any], Any] | None = None, **argparse_settings):
    """A dataclass field that the command line offers as ``flag``.

    ``default`` or ``factory`` (for a list or dict) is the field's default, as
    for ``dataclasses.field``. ``help`` may name the instance's fields in
    braces (``"sigma {blur_sigma[0]:g}-{blur_sigma[1]:g}"``), filled in with the
    defaults shown. ``convert`` turns the option's parsed value (None where
    the option is not given) into the field's value. ``argparse_settings``
    (``metavar``, ``choices``, ``action``) go to ``add_argument``; the value
    type comes from the field's annotation.
    """
    metadata = {"flag": flag, "help": help, "convert": convert, "argparse": argparse_settings}
    return field(default=default, default_factory=factory, metadata=metadata)


def add_options(parser: argparse.ArgumentParser, defaults, staged: tuple[Any, str] | None = None,
                containers: dict | None = None) -> None:
    """One option per setting of ``defaults`` (a dataclass, and the dataclasses among its fields) declared with
    :func:`option`: its flag and help, ``defaults``' value as its default, and the field's name as its dest.

    ``staged`` is ``(settings, flag)``: the settings that another option (such as ``--finetune-from``) starts
    from. A setting they change gets no default: the help names both values, and :func:`with_options` applies
    the option only where it is given. ``containers`` puts the options of some settings (by field name) in an
    argument group instead of ``parser``.
    """
    types = get_type_hints(type(defaults))
    named = {spec.name: getattr(defaults, spec.name) for spec in fields(defaults)}
    for spec in fields(defaults):
        value = named[spec.name]
        staged_value = getattr(staged[0], spec.name) if staged else value
        if is_dataclass(value):
            add_options(parser, value, (staged_value, staged[1]) if staged else None, containers)
            continue
        if "flag" not in spec.metadata:
            continue
        help_text, default = spec.metadata["help"].format(**named), value
        if spec.metadata["convert"] or spec.metadata["argparse"].get("action") == "append" or "(default:" in help_text:
            default = None  # values collected or converted once parsed, over the setting's default; or said in words
        elif value is not None and staged_value != value:
            default = None
            help_text += f" (default: {value:g}; {staged_value:g} with {staged[1]})"
        # int for `int | None`, float for `list[float]`; anything else stays text.
        value_type = next((t for t in (*get_args(types[spec.name]), types[spec.name]) if t in (int, float)), None)
        typed = {"type": value_type} if value_type else {}  # a store_true flag takes no type
        (containers or {}).get(spec.name, parser).add_argument(
            spec.metadata["flag"], dest=spec.name, default=default, help=help_text, **typed,
            **spec.metadata["argparse"])


def with_options(settings, args: argparse.Namespace):
    """``settings`` (a dataclass) with each of its options that ``args`` holds a value for (None: not given),
    converted where the setting says so."""
    changes = {}
    for spec in fields(settings):
        value = getattr(settings, spec.name)
        if is_dataclass(value):
            changes[spec.name] = with_options(value, args)
        elif "flag" in spec.metadata:
            given = getattr(args, spec.name)
            given = spec.metadata["convert"](given) if spec.metadata["convert"] else given
            if given is not None:
                changes[spec.name] = given
    return replace(settings, **changes)

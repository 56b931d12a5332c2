"""Config dataclasses as a typed command line.

Every field of a config dataclass becomes ``--field-name`` with its type, default and the field's
docstring as help (read from the source, tyro-style). ``bool`` fields become ``--flag`` /
``--no-flag``; ``X | None`` fields accept ``none``; ``list[X]`` fields take comma-separated items.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing


def field_docs(cls) -> dict[str, str]:
    """Docstrings written under each field of a dataclass (attribute docstrings), base classes too."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            docs.update(_own_field_docs(klass))
    return docs


def _own_field_docs(cls) -> dict[str, str]:
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and \
                isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) and \
                isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(tp):
    """``(type, optional)`` of a field annotation."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _is_list(tp) -> bool:
    return typing.get_origin(tp) in (list, tuple)


def _type_name(tp) -> str:
    if _is_list(tp):
        return f"{typing.get_args(tp)[0].__name__.upper()},..."
    return tp.__name__.upper()


def _parser_for(tp, optional: bool):
    def parse(text: str):
        if optional and text.lower() == "none":
            return None
        if _is_list(tp):  # comma-separated items
            item = typing.get_args(tp)[0]
            return [item(x.strip()) for x in text.split(",") if x.strip()]
        return tp(text)
    parse.__name__ = getattr(tp, "__name__", "list")  # argparse names the type in its error messages
    return parse


def add_dataclass_args(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (), positional: tuple[str, ...] = (),
                       suppress_defaults: bool = False):
    """One option per field. With ``suppress_defaults`` the namespace holds only the options given
    on the command line (to tell explicit settings from defaults)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, optional = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        shown = default
        if suppress_defaults:
            default = argparse.SUPPRESS
        help_text = docs.get(f.name, "")
        if f.name in positional:
            parser.add_argument(f.name, type=_parser_for(tp, optional), help=help_text)
            continue
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)
        else:
            parser.add_argument(flag, dest=f.name, type=_parser_for(tp, optional), default=default,
                                metavar=_type_name(tp), help=f"{help_text} (default: {_show(shown)})")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def from_args(cls, args: argparse.Namespace):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in vars(args).items() if k in names})

"""The one reader of the YAML files people write: sweep and benchmark configs (``sweep.core.config``)
and optimizer declarations (``optim.declared``), so a file means the same wherever it is read.

PyYAML's safe loader, with two changes. ``1e-3`` is a number, as on the command line (YAML 1.1's
float pattern wants a dot: ``1.0e-3``, and reads ``1e-3`` as text). A key given twice in one
mapping is refused (PyYAML keeps the last one silently: ``epochs: 2`` then ``epochs: 3`` ran 3).
Every failure is a ``FileError`` whose text is one line naming the file and the place in it.
Kept here, below the sweep, because the optimizer registry reads its files too.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError

# ``1e-3``: a number, though YAML 1.1 reads it as text (the command line's values use it too)
SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
MERGE = "tag:yaml.org,2002:merge"  # ``<<: *defaults``: its keys may be overridden, that is its point


class DuplicateKey(ConstructorError):
    """A key given twice in one mapping: ``key``, and the line (1-based) of each."""

    def __init__(self, key: Any, first_line: int, key_node: yaml.Node):
        super().__init__(problem=f"duplicate key {key!r}", problem_mark=key_node.start_mark)
        self.key, self.first_line, self.line = key, first_line, key_node.start_mark.line + 1


class Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a number and refuses a key given twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, seen[key], key_node)
            except TypeError:  # an unhashable key: the safe loader's own error says so
                continue
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


Loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(f"^{SCIENTIFIC.pattern}$"), list("-+0123456789."))


class FileError(ValueError):
    """A YAML file that cannot be read: ``where`` (the file, with the line when known) and
    ``problem``; ``str()`` is the one line to show."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem

    def __reduce__(self):
        return type(self), (self.where, self.problem)


def loads(text: str) -> Any:
    """A YAML text (a value on the command line) as data; raises ``yaml.YAMLError``."""
    return yaml.load(text, Loader=Loader)


def read(path: Path) -> Any:
    """The file's data (None for an empty file); raises ``FileError``: it cannot be read, is not
    UTF-8 (the first bad byte's offset and line), is not valid YAML or gives a key twice."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileError(str(path), f"cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise FileError(
            f"{path} line {line}",
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); save the file as UTF-8",
        ) from None
    try:
        return loads(text)
    except DuplicateKey as exc:
        raise FileError(
            f"{path} line {exc.line}", f"key {exc.key!r} is given twice (first on line {exc.first_line}); keep one"
        ) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1} column {mark.column + 1}" if mark else str(path)
        raise FileError(where, f"not valid YAML ({getattr(exc, 'problem', None) or type(exc).__name__})") from None

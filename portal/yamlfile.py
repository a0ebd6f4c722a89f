"""The YAML files people write for the portal, validated one way, with line-placed errors.

``portal.yaml`` (site admins), ``course.yaml`` (trainers) and ``images/environments.yaml``
(image maintainers) are each a pydantic model. A file is parsed twice: once by PyYAML's
composer, which keeps the line of every node, and once into plain data that the model
validates. Each problem is then placed on the line of the offending key and names the
valid keys or choices there, the same way in every file::

    course.yaml:4: environment: 'xrd' is not an environment; choose one of base, xrf, ...
    environments.yaml:31: environments[3] (tomography).resources.memory: must look like ...

Checks that need more than one field (a name listed twice, a notebook that is not in the
folder) are made after validation and placed with :func:`problem`, so they read alike.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError

M = TypeVar("M", bound=BaseModel)

#: A non-empty string, surrounding blanks removed.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]

#: Where a problem is: the keys and list indexes from the top of the file.
Location = tuple[str | int, ...]


class YamlFileError(Exception):
    """A file is unreadable or invalid; each problem is a line for a person."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class Strict(BaseModel):
    """A part of a file: unknown keys are errors (a typo must not be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Document:
    """One file's text, parsed, with the line of every key kept for error messages."""

    def __init__(self, text: str, source: str) -> None:
        self.source = source
        try:
            self.root: yaml.Node | None = yaml.compose(text)
            self.data: Any = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{source}:{mark.line + 1}" if mark else source
            raise YamlFileError([f"{where}: not valid YAML: {getattr(e, 'problem', e)}"]) from None

    def _node(self, loc: Location) -> tuple[int, list[str]]:
        """The 1-based line of the key at ``loc`` (or of the deepest one that exists), and
        ``loc`` in words: ``environments[3] (tomography).resources``."""
        node, line, words = self.root, 0, []
        if node is not None:
            line = node.start_mark.line
        for step in loc:
            if isinstance(node, yaml.MappingNode):
                match = next(((k, v) for k, v in node.value if k.value == str(step)), None)
                words.append(str(step))
                if match is None:
                    node = None
                    continue
                line, node = match[0].start_mark.line, match[1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(step, int):
                item = node.value[step] if step < len(node.value) else None
                name = _name_of(item)
                label = f"[{step}]" + (f" ({name})" if name else "")
                words[-1:] = [(words[-1] if words else "") + label]
                node = item
                if item is not None:
                    line = item.start_mark.line
            else:
                words.append(f"[{step}]" if isinstance(step, int) else str(step))
                node = None
        return line + 1, words

    def problem(self, loc: Location, message: str, key: str | int | None = None) -> str:
        """``source:line: where: message`` for a problem at ``loc`` (on the line of its
        ``key``, when the problem is that key)."""
        line, words = self._node(loc if key is None else (*loc, key))
        words = words if key is None else self._node(loc)[1]
        where = ".".join(words) or "(top level)"
        return f"{self.source}:{line}: {where}: {message}"

    def validate(self, model: type[M], context: dict[str, Any] | None = None) -> M:
        """The file as ``model``; :class:`YamlFileError` lists every problem, placed."""
        data = {} if self.data is None else self.data
        if not isinstance(data, dict):
            keys = ", ".join(_keys(model))
            raise YamlFileError([f"{self.source}:1: the file must be a mapping of {keys}"])
        try:
            return model.model_validate(data, context=context)
        except ValidationError as e:
            raise YamlFileError([self._describe(model, err) for err in e.errors()]) from None

    def _describe(self, model: type[BaseModel], error: Any) -> str:
        loc = tuple(
            p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function"))
        )
        kind, message = error["type"], error["msg"]
        if kind == "extra_forbidden":
            valid = _keys_at(model, loc[:-1])
            return self.problem(
                loc[:-1], f"unknown key {loc[-1]!r}; valid keys here: {', '.join(valid)}", loc[-1]
            )
        if kind == "missing":
            message = "is required but missing"
        elif kind in ("url_parsing", "url_scheme"):
            message = f"{message}; expected a URL such as https://login.example.eu/realms/umbrella"
        elif kind == "string_too_short" and error.get("ctx", {}).get("min_length") == 1:
            message = "must not be empty"
        elif kind in ("list_type", "string_type"):
            message = f"must be a {kind.removesuffix('_type')}, got {error.get('input')!r}"
        elif kind == "value_error":
            message = message.removeprefix("Value error, ")
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = f"must be a mapping with {', '.join(_keys_at(model, loc)) or 'keys'}"
        return self.problem(loc, message)


def _name_of(item: yaml.Node | None) -> str:
    """A list item's ``name:``, to say which entry a problem is in."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if key.value == "name" and isinstance(value, yaml.ScalarNode):
                return str(value.value)
    return ""


def _keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items() if name != "source"]


def _keys_at(model: type[BaseModel], loc: Location) -> list[str]:
    """The keys valid at ``loc`` in ``model``, for 'unknown key' messages."""
    mapping_key = False
    for step in loc:
        if isinstance(step, int):  # an item of a list of sections
            continue
        if mapping_key:  # a key of a mapping of sections, e.g. a storage volume's folder
            mapping_key = False
            continue
        field = next(
            (f for name, f in model.model_fields.items() if (f.alias or name) == str(step)), None
        )
        if field is None:
            return []
        annotation = field.annotation
        mapping_key = getattr(annotation, "__origin__", None) is dict
        candidates = _flatten(annotation)
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return _keys(model)


def _flatten(annotation: Any) -> list[Any]:
    """The classes inside ``X | None``, ``list[X]``, ``dict[str, X]``..."""
    args = getattr(annotation, "__args__", None)
    if not args:
        return [annotation]
    return [c for a in args for c in _flatten(a)]

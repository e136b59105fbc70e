"""Named component factories, one table per kind, with option schemas taken from signatures."""

from __future__ import annotations

import difflib
import inspect
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import pydantic

from rats_core.errors import ConfigError, DuplicateComponentError, UnknownComponentError

KINDS = ("backbones", "rewards", "gates", "horizons", "metrics", "callbacks")
#: singular form used in messages and config sections
SINGULAR = {
    "backbones": "backbone",
    "rewards": "reward",
    "gates": "gate",
    "horizons": "horizon schedule",
    "metrics": "metric",
    "callbacks": "callback",
}


@dataclass
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str  # the plugin (module or distribution) that registered it

    @property
    def doc(self) -> str:
        """The docstring's first paragraph on one line, without reST markup (``x`` -> `x`)."""
        return summary_line(inspect.getdoc(self.factory) or "")

    def options_model(self) -> type[pydantic.BaseModel]:
        """A pydantic model of the factory's keyword options (extra options forbidden unless **kwargs)."""
        return _options_model(self.factory, f"{self.kind}.{self.name}")

    def options_schema(self) -> dict[str, Any]:
        try:
            return self.options_model().model_json_schema()
        except Exception:  # a plugin annotation pydantic cannot express: list names only
            return {"properties": {n: {} for n in _params(self.factory)}}

    def accepts_any_option(self) -> bool:
        """Whether the factory takes ``**kwargs`` (every option name is accepted)."""
        return self.options_model().model_config.get("extra") == "allow"

    def option_names(self) -> list[str]:
        return list(self.options_model().model_fields)

    def describe_options(self) -> list["OptionInfo"]:
        """Each option's name, type, default, constraint and description, read from the same pydantic
        model that validates the options (what ``rats plugins NAME`` prints)."""
        return describe_model(self.options_model())

    def validate_options(self, options: dict[str, Any], where: str, section_keys: Sequence[str] = ()) -> dict[str, Any]:
        """Check ``options`` against the factory's signature; ConfigError naming ``where.key`` if not.

        ``section_keys`` are the keys rats itself reads in the same config section (``name``, a
        reward's ``weight``...), listed beside the options when one is misspelled."""
        model = self.options_model()
        try:
            validated = model.model_validate(options)
        except pydantic.ValidationError as exc:
            owner = f"{SINGULAR[self.kind]} '{self.name}'"
            raise ConfigError(
                format_validation_error(exc, prefix=where, known=(self.option_names(), list(section_keys), owner))
            ) from None
        out = {k: getattr(validated, k) for k in model.model_fields if k in options or k in validated.model_fields_set}
        out.update(validated.model_extra or {})
        return out

    def build(self, options: dict[str, Any], where: str) -> Any:
        from rats_core.errors import PluginError, RatsError

        kwargs = self.validate_options(options, where)
        try:
            return self.factory(**kwargs)
        except RatsError as exc:
            # name the config key the component came from (e.g. `rewards.2`), once
            text = str(exc)
            raise type(exc)(text if text.startswith(f"{where}") else f"{where}: {text}") from None
        except ValueError as exc:  # factories reject bad option values with ValueError
            raise ConfigError(f"{where}: {exc}") from None
        except Exception as exc:  # a plugin bug or a bad option value it rejected itself
            raise PluginError(
                f"{SINGULAR[self.kind]} '{self.name}' (plugin {self.plugin}) failed to build: "
                f"{type(exc).__name__}: {exc}"
            ) from exc


def summary_line(doc: str) -> str:
    """The first paragraph of a docstring as one line, with reST literals (````x````) and roles
    (``:class:`x```) shown as plain `x`."""
    paragraph = []
    for line in doc.strip().splitlines():
        if not line.strip():
            break
        paragraph.append(line.strip())
    text = " ".join(paragraph)
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    return re.sub(r"``([^`]+)``", r"`\1`", text)


def _params(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    """The factory's parameters with their annotations resolved (plugins written with ``from __future__
    import annotations`` have strings). Only the parameters' annotations are evaluated, never the return
    annotation: a light factory may name its heavy result under ``if TYPE_CHECKING:`` only, so that
    reading its options imports no torch."""
    try:
        params = dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}
    target = inspect.unwrap(factory.__init__ if inspect.isclass(factory) else factory)
    namespace = getattr(target, "__globals__", {})
    for name, p in params.items():
        if isinstance(p.annotation, str):
            def holder(): ...  # noqa: E306 - carries one annotation for typing to resolve in the plugin's namespace
            holder.__annotations__ = {name: p.annotation}
            try:
                resolved = typing.get_type_hints(holder, globalns=namespace, include_extras=True)[name]
            except (NameError, SyntaxError, TypeError, AttributeError):
                continue
            params[name] = p.replace(annotation=resolved)
    return params


def _options_model(factory: Callable[..., Any], title: str) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    extra = "forbid"
    docs = param_docs(factory)
    for name, p in _params(factory).items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        if name in docs and not _has_description(annotation):
            default = pydantic.Field(default, description=docs[name])
        fields[name] = (annotation, default)
    config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=())
    return pydantic.create_model(title.replace(".", "_").replace("-", "_"), __config__=config, **fields)


def _has_description(annotation: Any) -> bool:
    return any(isinstance(m, pydantic.fields.FieldInfo) and m.description for m in getattr(annotation, "__metadata__", ()))


_PARAM_LINE = re.compile(r"^\s*(?::param\s+)?(?:``|`)?(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)(?:``|`)?\s*(?:\([^)]*\))?\s*:\s*(\S.*)$")


def param_docs(factory: Callable[..., Any]) -> dict[str, str]:
    """Per-option descriptions from the factory's docstring: an ``Args:`` / ``Options:`` /
    ``Parameters`` section (``name: text``, ``name (type): text``) or ``:param name: text`` lines.
    Continuation lines (indented deeper) are joined. Descriptions given as
    ``Annotated[..., Field(description=...)]`` take precedence."""
    doc = inspect.getdoc(factory) or ""
    if not doc and inspect.isclass(factory):
        doc = inspect.getdoc(factory.__init__) or ""
    names = set(_params(factory))
    out: dict[str, str] = {}
    in_section = False
    current: str | None = None
    indent = 0
    for line in doc.splitlines():
        stripped = line.strip()
        if re.match(r"^(Args|Arguments|Options|Parameters|Keyword Args|Keyword Arguments)\s*:?\s*$", stripped):
            in_section, current = True, None
            continue
        if stripped in ("----------",):
            continue
        m = _PARAM_LINE.match(line)
        if m and (in_section or line.lstrip().startswith(":param")) and m.group(1).lstrip("*") in names:
            current = m.group(1).lstrip("*")
            out[current] = m.group(2).strip()
            indent = len(line) - len(line.lstrip())
            continue
        if current and stripped and (len(line) - len(line.lstrip())) > indent:
            out[current] += " " + stripped
            continue
        if not stripped or (in_section and not line.startswith(" ") and stripped.endswith(":")):
            current = None
            if not stripped:
                continue
            in_section = False
    return out


@dataclass
class OptionInfo:
    """One option of a component (or key of a config section), as ``rats plugins NAME`` shows it."""

    name: str
    type: str
    default: Any
    required: bool
    constraint: str
    description: str

    def as_dict(self) -> dict[str, Any]:
        out = {"name": self.name, "type": self.type, "required": self.required, "constraint": self.constraint,
               "description": self.description}
        if not self.required:
            out["default"] = _jsonable(self.default)
        return out


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def type_name(annotation: Any) -> str:
    """A short, readable name of a type annotation: ``float``, ``int | None``, ``list[int]``, ``'a' | 'b'``."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return "any"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:  # the choices go in the constraint column
        return " | ".join(dict.fromkeys(type(a).__name__ for a in args))
    if origin in (typing.Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation).replace("typing.", ""))


_BOUNDS = (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤"), ("multiple_of", "multiple of"),
           ("min_length", "length ≥"), ("max_length", "length ≤"))


def constraint_text(field_info: Any) -> str:
    """``> 0``, ``≥ 0, ≤ 1``, ``one of 'a', 'b'`` ... from a pydantic field's metadata and annotation."""
    parts = []
    for meta in getattr(field_info, "metadata", ()):
        for attr, sign in _BOUNDS:
            value = getattr(meta, attr, None)
            if value is not None:
                parts.append(f"{sign} {value}")
    annotation = getattr(field_info, "annotation", None)
    literal = _literal_args(annotation)
    if literal:
        parts.append("one of " + ", ".join(repr(a) for a in literal))
    return ", ".join(parts)


def _literal_args(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        for a in typing.get_args(annotation):
            found = _literal_args(a)
            if found:
                return found
    return ()


def describe_model(model: type[pydantic.BaseModel]) -> list[OptionInfo]:
    out = []
    for name, f in model.model_fields.items():
        required = f.is_required()
        default = None if required else f.get_default(call_default_factory=True)
        out.append(OptionInfo(name, type_name(f.annotation), default, required, constraint_text(f),
                              (f.description or "").strip()))
    return out


def known_keys_at(model: type[pydantic.BaseModel], loc: Sequence[Any]) -> list[str] | None:
    """The field names of the (nested) model at ``loc`` inside ``model``; None if it is not a model
    (a component section, a free-form mapping)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or (isinstance(part, str) and part.isdigit()):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        current = _model_in(fields[part].annotation)
        if current is None:
            return None
    if not isinstance(current, type) or not issubclass(current, pydantic.BaseModel):
        return None
    if current.model_config.get("extra") == "allow":
        return None
    return list(current.model_fields)


def _model_in(annotation: Any) -> Any:
    """The pydantic model inside ``X``, ``X | None``, ``list[X]``, ``Annotated[X, ...]``."""
    if isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def suggest(name: str, candidates: Sequence[str]) -> str:
    """`` Did you mean 'x'?`` for a close match among ``candidates`` (empty when none is close)."""
    close = difflib.get_close_matches(str(name), list(candidates), n=3, cutoff=0.6)
    if not close:  # `widht` vs `width`, `step` vs `steps`: also match on a shared prefix
        close = [c for c in candidates if len(name) >= 3 and (c.startswith(name) or name.startswith(c))][:3]
    return f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def unknown_key_hint(key: str, known: Sequence[str], extra: Sequence[str] = (), owner: str = "") -> str:
    """`` Did you mean 'steps'? Valid keys: ...`` for a key that is not among ``known`` (+ ``extra``)."""
    every = list(known) + [k for k in extra if k not in known]
    hint = suggest(key, every)
    if owner:
        listing = f" Options of {owner}: {', '.join(known) or 'none'}"
        if extra:
            listing += f" (and the section's own keys: {', '.join(extra)})"
        return hint + listing + "."
    return hint + f" Valid keys: {', '.join(every) or 'none'}."


def format_validation_error(
    exc: pydantic.ValidationError,
    prefix: str = "",
    model: type[pydantic.BaseModel] | None = None,
    known: tuple[Sequence[str], Sequence[str], str] | None = None,
) -> str:
    """One readable line per problem: ``key.path: reason``.

    An unknown key gets a "did you mean" and the list of valid keys: those of ``model`` at the key's
    location (the config schema), or ``known`` = (options, the section's own keys, owner) for a
    component's options."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "value_error":  # our own validators' messages already say what is wrong
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
            name = str(err["loc"][-1]) if err["loc"] else ""
            if known is not None:
                msg += "." + unknown_key_hint(name, known[0], known[1], known[2])
            elif model is not None:
                keys = known_keys_at(model, err["loc"][:-1])
                if keys is not None:
                    msg += "." + unknown_key_hint(name, keys)
        elif err["type"] == "missing":
            msg = "required option is missing"
        lines.append((f"{key}: {msg}" if key else msg) + (f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") and _short(err.get("input")) else ""))
    return "\n".join(lines)


def _short(value: Any) -> bool:
    return value is not None and len(repr(value)) <= 60


@dataclass
class Registry:
    """Every registered component, by kind and name. Built once by :func:`rats_core.registry.plugins.get_registry`."""

    components: dict[str, dict[str, Component]] = field(default_factory=lambda: {k: {} for k in KINDS})
    #: plugin name -> error message, for plugins that failed to load or raised in a hook
    errors: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, name: str, factory: Callable[..., Any], plugin: str) -> None:
        self.check_entry(kind, name, factory, plugin)
        existing = self.components[kind].get(name)
        if existing is not None:
            raise DuplicateComponentError(
                f"{SINGULAR[kind]} '{name}' is registered twice: by {existing.plugin} and by {plugin}. "
                f"Uninstall one, or restrict plugins with RATS_LOAD_PLUGINS."
            )
        self.components[kind][name] = Component(kind, name, factory, plugin)

    @staticmethod
    def check_entry(kind: str, name: Any, factory: Any, plugin: str) -> None:
        """TypeError for a registration that can never work (empty name, non-callable factory)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"plugin {plugin} registered a {SINGULAR[kind]} with an invalid name {name!r}")
        if not callable(factory):
            raise TypeError(f"plugin {plugin} registered {SINGULAR[kind]} '{name}' with a non-callable factory")

    def get(self, kind: str, name: str) -> Component:
        table = self.components[kind]
        if name in table:
            return table[name]
        close = difflib.get_close_matches(str(name), list(table), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        known = ", ".join(sorted(table)) or "none"
        # A plugin that failed to load looks exactly like a missing one; say so.
        broken = f" Plugins that failed to load: {', '.join(sorted(self.errors))}." if self.errors else ""
        raise UnknownComponentError(
            f"unknown {SINGULAR[kind]} '{name}'.{hint} Registered: {known}.{broken} (`rats plugins` lists them.)"
        )

    def build(self, kind: str, name: str, options: dict[str, Any] | None = None, where: str | None = None) -> Any:
        return self.get(kind, name).build(dict(options or {}), where or SINGULAR[kind])

    def names(self, kind: str) -> list[str]:
        return sorted(self.components[kind])

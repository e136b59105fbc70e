"""Named component factories, one table per kind, with option schemas taken from signatures."""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

import pydantic

from .errors import ConfigError, DuplicateComponentError, UnknownComponentError

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
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def options_model(self) -> type[pydantic.BaseModel]:
        """A pydantic model of the factory's keyword options (extra options forbidden unless **kwargs)."""
        return _options_model(self.factory, f"{self.kind}.{self.name}")

    def options_schema(self) -> dict[str, Any]:
        try:
            return self.options_model().model_json_schema()
        except Exception:  # a plugin annotation pydantic cannot express: list names only
            return {"properties": {n: {} for n in _params(self.factory)}}

    def validate_options(self, options: dict[str, Any], where: str) -> dict[str, Any]:
        """Check ``options`` against the factory's signature; ConfigError naming ``where.key`` if not."""
        model = self.options_model()
        try:
            validated = model.model_validate(options)
        except pydantic.ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=where)) from None
        out = {k: getattr(validated, k) for k in model.model_fields if k in options or k in validated.model_fields_set}
        out.update(validated.model_extra or {})
        return out

    def build(self, options: dict[str, Any], where: str) -> Any:
        from .errors import PluginError, RatsError

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


def _params(factory: Callable[..., Any]) -> dict[str, inspect.Parameter]:
    try:
        # eval_str resolves annotations of plugins written with `from __future__ import annotations`
        return dict(inspect.signature(factory, eval_str=True).parameters)
    except (NameError, SyntaxError):
        return dict(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return {}


def _options_model(factory: Callable[..., Any], title: str) -> type[pydantic.BaseModel]:
    fields: dict[str, Any] = {}
    extra = "forbid"
    for name, p in _params(factory).items():
        if p.kind is inspect.Parameter.VAR_KEYWORD:
            extra = "allow"
            continue
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        annotation = Any if p.annotation is inspect.Parameter.empty else p.annotation
        default = ... if p.default is inspect.Parameter.empty else p.default
        fields[name] = (annotation, default)
    config = pydantic.ConfigDict(extra=extra, arbitrary_types_allowed=True, protected_namespaces=())
    return pydantic.create_model(title.replace(".", "_").replace("-", "_"), __config__=config, **fields)


def format_validation_error(exc: pydantic.ValidationError, prefix: str = "") -> str:
    """One readable line per problem: ``key.path: reason``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"] if p != "__root__")
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "value_error":  # our own validators' messages already say what is wrong
            msg = msg.removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown option"
        elif err["type"] == "missing":
            msg = "required option is missing"
        lines.append((f"{key}: {msg}" if key else msg) + (f" (got {err['input']!r})" if err["type"] not in ("missing", "extra_forbidden") and _short(err.get("input")) else ""))
    return "\n".join(lines)


def _short(value: Any) -> bool:
    return value is not None and len(repr(value)) <= 60


@dataclass
class Registry:
    """Every registered component, by kind and name. Built once by :func:`rats_core.plugins.get_registry`."""

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

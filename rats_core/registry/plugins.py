"""Plugin loading: built-ins and entry points of the ``rats`` group, once, into one registry.

``RATS_LOAD_PLUGINS`` restricts which *external* plugins load: a comma-separated list of entry-point
or distribution names (empty: none). Built-ins always load.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import os
from types import ModuleType
from typing import Any

import pluggy

from rats_core.errors import PluginError
from rats_core.registry import hookspecs
from rats_core.registry.catalogue import KINDS, Registry

ENTRY_POINT_GROUP = "rats"
OWN_DISTRIBUTION = "rats"

#: Built-in plugin modules, registered through the same hooks as everyone else's. Each imports no torch
#: (nor diffusers, transformers, open_clip): its factories import their models when called, so listing
#: the components and validating their options stays light (tests/test_cli_lazy.py).
DEFAULT_PLUGINS = (
    "rats_plugins.gates",
    "rats_plugins.horizons",
    "rats_plugins.callbacks",
    "rats_plugins.trackers",
    "rats_plugins.toy",
    "rats_plugins.digits.plugin",
    "rats_plugins.scenes.plugin",
    "rats_plugins.backbones.plugin",
    "rats_plugins.rewards.plugin",
)

_pm: pluggy.PluginManager | None = None
_registry: Registry | None = None
_load_errors: dict[str, str] = {}


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading plugins on first use."""
    global _pm
    if _pm is None:
        pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        _load_errors.clear()
        for module_name in DEFAULT_PLUGINS:
            _try_register(pm, module_name, lambda m=module_name: importlib.import_module(m))
        allowed = _allowed_external()
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist is not None else ""
            if dist == OWN_DISTRIBUTION or ep.value in DEFAULT_PLUGINS:
                continue  # built-ins: already registered above
            if allowed is not None and ep.name not in allowed and dist not in allowed:
                continue
            label = f"{dist}:{ep.name}" if dist else ep.name
            _try_register(pm, label, ep.load)
        _pm = pm
    return _pm


def _entry_points() -> list[md.EntryPoint]:
    return list(md.entry_points(group=ENTRY_POINT_GROUP))


def _allowed_external() -> set[str] | None:
    value = os.environ.get("RATS_LOAD_PLUGINS")
    if value is None:
        return None
    return {v.strip() for v in value.split(",") if v.strip()}


def _try_register(pm: pluggy.PluginManager, name: str, load) -> None:
    try:
        plugin = load()
        if pm.is_registered(plugin):
            return
        pm.register(plugin, name=name)
    except Exception as exc:  # a broken plugin must not take the others down
        _load_errors[name] = f"failed to load: {type(exc).__name__}: {exc}"
        return
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        _load_errors[name] = unknown


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> str | None:
    """pluggy silently accepts a hookimpl no spec matches (``register_gate`` for ``register_gates``):
    the plugin would load and register nothing. Say so instead."""
    names = sorted(hc.name for hc in pm.get_hookcallers(plugin) or [] if hc.spec is None)
    if not names:
        return None
    known = ", ".join(f"register_{k}" for k in KINDS)
    return f"implements unknown hook(s) {', '.join(names)}; the hooks are {known}"


def register_plugin(plugin: ModuleType | object, name: str | None = None) -> None:
    """Register a plugin object at run time (tests, notebooks). Resets the registry."""
    global _registry
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    _registry = None
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        raise PluginError(f"plugin {name or plugin!r} {unknown}")


def unregister_plugin(name: str) -> None:
    global _registry
    pm = get_plugin_manager()
    plugin = pm.get_plugin(name)
    if plugin is not None:
        pm.unregister(plugin)
    _registry = None


def reset() -> None:
    """Forget loaded plugins; the next call loads them again (tests, env var changes)."""
    global _pm, _registry
    _pm = None
    _registry = None


def get_registry() -> Registry:
    """All components, built once. Plugins that fail to import or raise in a hook are recorded in
    ``registry.errors`` and skipped; a duplicate name raises :class:`DuplicateComponentError`."""
    global _registry
    if _registry is None:
        pm = get_plugin_manager()
        registry = Registry()
        registry.errors.update(_load_errors)
        for kind in KINDS:
            hook = getattr(pm.hook, f"register_{kind}")
            # pluggy calls the newest registration first; walk oldest first so built-ins win ties
            # in messages and so the order of `rats plugins` is stable.
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name
                pending: list[tuple[str, Any]] = []

                def register(name, factory, _pending=pending, _kind=kind, _plugin=plugin_name):
                    Registry.check_entry(_kind, name, factory, _plugin)
                    _pending.append((name, factory))

                try:
                    impl.function(register=register)
                except Exception as exc:
                    # all or nothing: a hook that raises half-way registers none of its components
                    message = f"raised in register_{kind}: {type(exc).__name__}: {exc}"
                    previous = registry.errors.get(plugin_name)
                    registry.errors[plugin_name] = f"{previous}; {message}" if previous else message
                    continue
                for name, factory in pending:
                    registry.add(kind, name, factory, plugin_name)
        _registry = registry
    return _registry


def list_plugins() -> list[dict[str, Any]]:
    """What ``rats plugins --json`` prints: one entry per plugin with its hooks and components."""
    pm = get_plugin_manager()
    registry = get_registry()
    dist_of = {}
    for ep in _entry_points():
        if ep.dist is not None:
            dist_of[f"{ep.dist.name}:{ep.name}"] = (ep.dist.name, ep.dist.version)
    out = []
    for name, plugin in pm.list_name_plugin():
        hooks = sorted(h.name for h in pm.get_hookcallers(plugin) or [])
        components = {
            kind: sorted(c.name for c in registry.components[kind].values() if c.plugin == name) for kind in KINDS
        }
        dist = dist_of.get(name)
        entry = {
            "name": name,
            "builtin": name in DEFAULT_PLUGINS,
            "hooks": hooks,
            "components": {k: v for k, v in components.items() if v},
            # each component's options as a JSON schema (type, default, bounds, description per option),
            # from the pydantic model that validates them
            "schemas": {
                kind: {n: registry.get(kind, n).options_schema() for n in names}
                for kind, names in components.items() if names
            },
        }
        if dist:
            entry["distribution"], entry["version"] = dist
        if name in registry.errors:
            entry["error"] = registry.errors[name]
        out.append(entry)
    for name, err in registry.errors.items():
        if pm.get_plugin(name) is None:
            out.append({"name": name, "builtin": name in DEFAULT_PLUGINS, "hooks": [], "components": {}, "error": err})
    return out


def format_plugin_errors(registry: Registry) -> str:
    return "\n".join(f"plugin {name}: {err}" for name, err in registry.errors.items())


__all__ = [
    "DEFAULT_PLUGINS",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "get_plugin_manager",
    "get_registry",
    "list_plugins",
    "register_plugin",
    "reset",
    "unregister_plugin",
]

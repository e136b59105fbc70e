"""``rats plugins NAME``: one component's options, read from the pydantic model that validates them."""

from __future__ import annotations

import json
import sys
from typing import Any

from rats_core.errors import UnknownComponentError
from rats_core.registry.catalogue import KINDS, SINGULAR, Component, OptionInfo, suggest  # noqa: F401

#: the config section a component of each kind is written in
SECTION = {
    "backbones": "backbone",
    "rewards": "rewards.N",
    "gates": "gate",
    "horizons": "horizons",
    "metrics": "eval.metrics.N",
    "callbacks": "callbacks.N",
}

#: what the keys rats reads itself in a rewards entry mean (they are never passed to the reward)
REWARD_KEY_DOCS = {
    "weight": "weight in the combined reward; 0 only logs it",
    "normalize": "fixed: standardise as (score − mean) / std before weighting",
    "mean": "mean for normalize: fixed",
    "std": "standard deviation for normalize: fixed",
    "frames": "videos: an image reward scores the mean over this many evenly spaced frames",
}


def reward_keys() -> list[OptionInfo]:
    """The keys of a rewards entry that rats reads itself, from the config schema (RewardConfig)."""
    from rats_core.config import RewardConfig
    from rats_core.registry.catalogue import describe_model

    out = []
    for o in describe_model(RewardConfig):
        if o.name != "name":
            o.description = o.description or REWARD_KEY_DOCS.get(o.name, "")
            out.append(o)
    return out


def find_components(name: str) -> list[Component]:
    """Every registered component called ``name`` (``KIND/NAME`` picks one kind); UnknownComponentError
    with close names otherwise."""
    from rats_core.registry.plugins import get_registry

    registry = get_registry()
    kind, _, bare = name.rpartition("/")
    kinds = [k for k in KINDS if kind in (k, SINGULAR[k])] if kind else list(KINDS)
    if kind and not kinds:
        raise UnknownComponentError(f"'{kind}' is not a kind of component; the kinds are {', '.join(KINDS)}")
    found = [registry.components[k][bare] for k in kinds if bare in registry.components[k]]
    if found:
        return found
    every = sorted({n for k in kinds for n in registry.components[k]})
    raise UnknownComponentError(
        f"no component named '{bare}'.{suggest(bare, every)} Registered: {', '.join(every)}. "
        "(`rats plugins` lists them with their kinds.)"
    )


def _default(o: OptionInfo) -> str:
    if o.required:
        return "(required)"
    return json.dumps(o.default) if isinstance(o.default, (str, bool, type(None))) else repr(o.default)


def _table(rows: list[OptionInfo]) -> list[str]:
    head = ("OPTION", "TYPE", "DEFAULT", "CONSTRAINT", "DESCRIPTION")
    cells = [(o.name, o.type, _default(o), o.constraint or "-", o.description) for o in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head[:4])]
    lines = ["  " + "  ".join(h.ljust(w) for h, w in zip(head[:4], widths)) + "  " + head[4]]
    for c in cells:
        lines.append(("  " + "  ".join(v.ljust(w) for v, w in zip(c[:4], widths)) + "  " + c[4]).rstrip())
    return lines


def describe(component: Component) -> dict[str, Any]:
    options = component.describe_options()
    out: dict[str, Any] = {
        "kind": component.kind,
        "name": component.name,
        "plugin": component.plugin,
        "description": component.doc,
        "section": SECTION.get(component.kind, component.kind),
        "options": [o.as_dict() for o in options],
        "accepts_any_option": component.accepts_any_option(),
        "schema": component.options_schema(),
    }
    if component.kind == "rewards":
        out["section_keys"] = [o.as_dict() for o in reward_keys()]
    return out


def show_component(name: str, as_json: bool = False, file: Any = None) -> int:
    file = file or sys.stdout
    components = find_components(name)
    if as_json:
        data = [describe(c) for c in components]
        print(json.dumps(data[0] if len(data) == 1 else data, indent=2, default=repr), file=file)
        return 0
    for i, c in enumerate(components):
        if i:
            print(file=file)
        section = SECTION.get(c.kind, c.kind)
        print(f"{SINGULAR[c.kind]} '{c.name}' (plugin {c.plugin})" + (f": {c.doc}" if c.doc else ""), file=file)
        options = c.describe_options()
        example = f"{section}.{options[0].name}=..." if options else ""
        print(f"In a config: `{section.split('.')[0]}:` with name: {c.name}"
              + (f"; override an option with {example}" if example else ""), file=file)
        if options:
            print(file=file)
            for line in _table(options):
                print(line, file=file)
        else:
            print("  no options", file=file)
        if c.accepts_any_option():
            print("  (it also accepts any other option: its factory takes **kwargs)", file=file)
        if c.kind == "rewards":
            print("\n  Also in each rewards entry (read by rats, not passed to the reward):", file=file)
            for line in _table(reward_keys())[1:]:
                print(line, file=file)
    return 0

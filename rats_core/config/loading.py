"""Reading a config: YAML files, ``base:`` composition, ``key=value`` overrides, plain-data checks, the
validation against the schema and the registered components.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pydantic
import yaml

from rats_core.config.schema import RatsConfig
from rats_core.errors import ConfigError, UnknownComponentError
from rats_core.registry.catalogue import format_validation_error


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with the safe loader; ConfigError with file and line on any problem."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such file")
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory, expected a YAML config file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty; see experiments/ for complete examples")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    return data


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*(\.[A-Za-z0-9_\-]+)*$")


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides (values parsed as YAML) to a config mapping, in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value, e.g. train.steps=10")
        key, _, raw = item.partition("=")
        key = key.strip()
        if not _KEY_RE.match(key):
            raise ConfigError(f"override '{item}': '{key}' is not a dotted key like gate.tau")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            problem = getattr(exc, "problem", None) or "invalid YAML"
            raise ConfigError(f"override '{item}': cannot parse the value ({problem})") from None
        parts = key.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            node = _child(node, part, ".".join(parts[: i + 1]), item, create=True)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(last, node, key, item)
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override '{item}': '{'.'.join(parts[:-1])}' is not a section")
    return data


def _index(part: str, node: list, key: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override '{item}': '{key}' indexes a list of {len(node)} entries with '{part}'")
    return int(part)


def _child(node: Any, part: str, key: str, item: str, create: bool) -> Any:
    if isinstance(node, list):
        return node[_index(part, node, key, item)]
    if not isinstance(node, dict):
        raise ConfigError(f"override '{item}': '{key}' is inside a value that is not a section")
    if part not in node or node[part] is None:
        if not create:
            raise ConfigError(f"override '{item}': no key '{key}'")
        node[part] = {}
    return node[part]


#: the keys rats itself reads in each kind of component section (everything else is the component's option)
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "backbones": ("name",),
    "rewards": ("name", "weight", "normalize", "mean", "std", "frames"),
    "gates": ("name",),
    "horizons": ("name",),
    "metrics": ("name",),
    "callbacks": ("name",),
}


def _component_sections(data: Any) -> list[tuple[str, str, dict[str, Any]]]:
    """``(key, kind, section)`` of every component section of a raw config mapping."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    if not isinstance(data, dict):
        return out
    for key, kind in (("backbone", "backbones"), ("gate", "gates"), ("horizons", "horizons")):
        if isinstance(data.get(key), dict):
            out.append((key, kind, data[key]))
    rewards = data.get("rewards")
    for i, r in enumerate(rewards if isinstance(rewards, list) else []):
        if isinstance(r, dict):
            out.append((f"rewards.{i}", "rewards", r))
    ev = data.get("eval")
    metrics = ev.get("metrics") if isinstance(ev, dict) else None
    for i, m in enumerate(metrics if isinstance(metrics, list) else []):
        if isinstance(m, dict):
            out.append((f"eval.metrics.{i}", "metrics", m))
    callbacks = data.get("callbacks")
    for i, c in enumerate(callbacks if isinstance(callbacks, list) else []):
        if isinstance(c, dict):
            out.append((f"callbacks.{i}", "callbacks", c))
    return out


def drop_foreign_options(data: dict[str, Any], overrides: list[str]) -> list[str]:
    """After ``section.name=other`` overrides: remove the options written in the file for the old
    component that the new one does not take, unless an override sets them too. Returns one notice
    line per section changed (what the CLI prints).

    Only a switch by a ``…name=`` override counts: a section replaced as a whole
    (``"gate={name: hard}"``) or a component named in the file is left as written, and an unknown
    new name is left for :func:`check_components` to report."""
    keys = [item.partition("=")[0].strip() for item in overrides if "=" in item]
    switched = {k[: -len(".name")] for k in keys if k.endswith(".name")}
    if not switched:
        return []
    notices = []
    registry = None
    for where, kind, section in _component_sections(data):
        if where not in switched:
            continue
        # a whole-section (or whole-list) override: the user wrote everything in it
        parents = {".".join(where.split(".")[:i]) for i in range(1, where.count(".") + 2)}
        if any(k in parents for k in keys):
            continue
        given = {k[len(where) + 1 :].split(".")[0] for k in keys if k.startswith(where + ".")}
        if registry is None:
            from rats_core.registry.plugins import get_registry

            registry = get_registry()
        try:
            component = registry.get(kind, str(section.get("name")))
        except UnknownComponentError:
            continue
        if component.accepts_any_option():
            continue
        accepted = set(component.option_names()) | set(SECTION_KEYS[kind])
        dropped = [k for k in list(section) if k not in accepted and k not in given]
        for k in dropped:
            del section[k]
        if dropped:
            takes = ", ".join(component.option_names()) or "no options"
            notices.append(
                f"note: {where}.name={section['name']}: dropped {', '.join(f'{where}.{k}' for k in dropped)} "
                f"from the file ({section['name']} takes: {takes})"
            )
    return notices


def _notify(lines: list[str]) -> None:
    if lines and os.environ.get("RANK", "0") in ("0", ""):  # once, not once per rank
        for line in lines:
            print(line, file=sys.stderr)


# ---------------------------------------------------------------------------- composition (`base:`)

#: how deep `base:` files may chain (a.yaml → b.yaml → ...)
MAX_BASE_DEPTH = 8


def _is_input_path(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and value != "default" and not Path(value).expanduser().is_absolute()


def absolutize_inputs(data: dict[str, Any], folder: Path) -> None:
    """Rewrite the input paths a config file wrote relative to its own folder (prompt files, a
    ``train.resume`` checkpoint folder, a component's ``path`` that exists there) as absolute paths, in
    place, so they keep pointing at the same files when another file inherits them with ``base:``."""
    def fix(section: Any, key: str, must_exist: bool) -> None:
        if isinstance(section, dict) and _is_input_path(section.get(key)):
            candidate = (folder / Path(section[key]).expanduser())
            if not must_exist or candidate.exists():
                section[key] = str(candidate.resolve() if candidate.exists() else candidate)

    for section, key in (("data", "prompts"), ("data", "eval_prompts"), ("eval", "prompts")):
        fix(data.get(section), key, must_exist=False)
    train = data.get("train")
    if isinstance(train, dict) and train.get("resume") not in (None, "auto", "never"):
        fix(train, "resume", must_exist=False)
    # a component's `path` may be a hub id: only a path that exists next to the file is one
    for _where, _kind, section in _component_sections(data):
        fix(section, "path", must_exist=True)


def merge_config(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """``top`` on ``base``: mappings merge key by key, anything else (lists such as ``rewards``, values)
    is replaced; a component section naming another component (``gate: {name: hard}`` over
    ``gate: {name: sigmoid, tau: 0.1}``) replaces the base's section instead of inheriting its options."""
    out = dict(base)
    for key, value in top.items():
        old = out.get(key)
        if isinstance(value, dict) and isinstance(old, dict) and not (
            "name" in value and "name" in old and value["name"] != old["name"]
        ):
            out[key] = merge_config(old, value)
        else:
            out[key] = value
    return out


def read_config_data(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file's mapping with its ``base:`` chain applied: the base file (a path relative to the
    file that names it) is read first, its input paths made absolute, and this file's keys merged on
    top (:func:`merge_config`)."""
    path = Path(path)
    data = read_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the path of another config file, e.g. base: digits.yaml")
    base_path = Path(base).expanduser()
    if not base_path.is_absolute():
        base_path = path.resolve().parent / base_path
    here = path.resolve()
    if base_path.resolve() in (*_seen, here):
        chain = " -> ".join(str(p) for p in (*_seen, here, base_path.resolve()))
        raise ConfigError(f"{path}: base: the files include each other ({chain})")
    if len(_seen) >= MAX_BASE_DEPTH:
        raise ConfigError(f"{path}: base: more than {MAX_BASE_DEPTH} files deep")
    if not base_path.is_file():
        raise ConfigError(f"{path}: base: {base_path} does not exist (a base path is relative to the file that "
                          "names it)")
    parent = read_config_data(base_path, (*_seen, here))
    absolutize_inputs(parent, base_path.resolve().parent)
    return merge_config(parent, data)


def load_config(path: str | Path, overrides: list[str] | None = None) -> RatsConfig:
    """Read, override and validate a config. Raises ConfigError with the file and key on any problem.

    ``base: other.yaml`` in the file inherits that file (see :func:`read_config_data`). A component
    switched by an override (``gate.name=hard``) sheds the file's options that the new component does
    not take (see :func:`drop_foreign_options`); a one-line note on stderr says which."""
    path = Path(path)
    data = read_config_data(path)
    overrides = list(overrides or [])
    apply_overrides(data, overrides)
    _notify(drop_foreign_options(data, overrides))
    cfg = validate_config(data, source=str(path))
    cfg._base_dir = path.resolve().parent
    return cfg


#: far more values than any real config holds; a YAML "billion laughs" (aliases of aliases) expands past it
MAX_CONFIG_VALUES = 100_000


def check_plain_data(data: Any, source: str = "config") -> None:
    """Refuse what YAML allows but no config needs: an alias cycle (``&a [*a]``), aliases that expand
    to an enormous document, and NUL characters (no path or name may hold one)."""
    count = 0
    stack: list[tuple[Any, str]] = [(data, "")]
    on_path: set[int] = set()
    # iterative DFS with an explicit "leave" marker, so deep nesting cannot overflow the Python stack
    leave = object()
    while stack:
        node, key = stack.pop()
        if node is leave:
            on_path.discard(int(key))
            continue
        count += 1
        if count > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"{source}: the configuration expands to more than {MAX_CONFIG_VALUES} values "
                "(YAML aliases of aliases?); refusing it"
            )
        where = key or "top level"
        if isinstance(node, str):
            if "\x00" in node:
                raise ConfigError(f"{source}: {where}: contains a NUL character")
            continue
        if isinstance(node, (dict, list)):
            if id(node) in on_path:
                raise ConfigError(f"{source}: {where}: refers to itself through a YAML alias (&anchor ... *anchor)")
            on_path.add(id(node))
            stack.append((leave, str(id(node))))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for k, v in items:
                if isinstance(k, str) and "\x00" in k:
                    raise ConfigError(f"{source}: {where}: a key contains a NUL character")
                stack.append((v, f"{key}.{k}" if key else str(k)))


def validate_config(data: dict[str, Any], source: str = "config") -> RatsConfig:
    check_plain_data(data, source)
    try:
        return RatsConfig.model_validate(data)
    except pydantic.ValidationError as exc:
        raise ConfigError(
            f"{source}: invalid configuration\n" + _indent(format_validation_error(exc, model=RatsConfig))
        ) from None


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def check_components(cfg: RatsConfig, source: str = "config") -> None:
    """Check that every named component exists and its options validate (what `rats validate` does)."""
    from rats_core.registry.plugins import get_registry
    from rats_core.weights import remember_config, settle_hub

    registry = get_registry()
    # before any component is built: one Hub probe decides offline mode for every model loader
    settle_hub(start=False)
    remember_config(cfg)

    def check(kind: str, section: Any, where: str) -> None:
        try:
            component = registry.get(kind, section.name)
        except UnknownComponentError as exc:
            raise UnknownComponentError(f"{where}.name: {exc}") from None
        component.validate_options(section.options, where, SECTION_KEYS[kind])

    try:
        check("backbones", cfg.backbone, "backbone")
        for i, r in enumerate(cfg.rewards):
            check("rewards", r, f"rewards.{i}")
        check("gates", cfg.gate, "gate")
        check("horizons", cfg.horizons, "horizons")
        for i, m in enumerate(cfg.eval.metrics):
            check("metrics", m, f"eval.metrics.{i}")
        for i, c in enumerate(cfg.callbacks):
            check("callbacks", c, f"callbacks.{i}")
        from rats_core.prompts import load_prompts

        load_prompts(cfg.data.prompts, cfg.base_dir, "data.prompts")
        for key, spec in (("data.eval_prompts", cfg.data.eval_prompts), ("eval.prompts", cfg.eval.prompts)):
            if spec is not None:
                load_prompts(spec, cfg.base_dir, key)
    except ConfigError as exc:
        raise type(exc)(f"{source}: {exc}") from None

"""Plugin loading and the component registry (rats_core/registry/plugins.py, rats_core/registry/catalogue.py).

Entry points are faked the way pluggy's own tests do it (a stand-in for ``importlib.metadata``'s
entry points and distributions); ``test_third_party_package_installed_for_real`` installs an actual
package with a ``[project.entry-points.rats]`` table into a throwaway virtual environment.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import pytest
import torch
from pydantic import Field

from rats_core import hookimpl
from rats_core.cli import main
from rats_core.errors import (
    ConfigError,
    DuplicateComponentError,
    PluginError,
    UnknownComponentError,
    WeightsNotFoundError,
)
from rats_core.registry.catalogue import KINDS, Registry

REPO = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fakes


@dataclass
class FakeDist:
    name: str
    version: str = "1.0"


@dataclass
class FakeEntryPoint:
    name: str
    plugin: Any  # what load() returns, or an exception instance to raise
    dist: FakeDist | None = None
    group: str = "rats"

    @property
    def value(self) -> str:
        return f"fake_{self.name}"

    def load(self):
        if isinstance(self.plugin, BaseException):
            raise self.plugin
        return self.plugin


@pytest.fixture
def fake_entry_points(monkeypatch, fresh_plugins):
    """Install fake distributions next to the real ones; returns a list to append FakeEntryPoints to."""
    fakes: list[FakeEntryPoint] = []
    real = md.entry_points

    def entry_points(**kwargs):
        eps = list(real(**kwargs))
        if kwargs.get("group") == "rats":
            eps += [ep for ep in fakes if ep.group == "rats"]
        return eps

    monkeypatch.setattr(md, "entry_points", entry_points)
    monkeypatch.delenv("RATS_LOAD_PLUGINS", raising=False)
    return fakes


class EveryHookPlugin:
    """A plugin implementing every hook, as a third party would."""

    @hookimpl
    def register_backbones(self, register):
        from rats_plugins.toy import toy

        def tiny(resolution: int = 4, path: str | None = None):
            """A renamed toy backbone."""
            return toy(resolution=resolution)

        register("every-backbone", tiny)

    @hookimpl
    def register_rewards(self, register):
        register("every-reward", lambda: (lambda images, prompts: images.mean(dim=(1, 2, 3))))

    @hookimpl
    def register_gates(self, register):
        def half(c: Annotated[float, Field(ge=0, le=1)] = 0.5):
            return lambda r_t, r_s: torch.full_like(r_t, c)

        register("every-gate", half)

    @hookimpl
    def register_horizons(self, register):
        register("every-horizon", lambda: (lambda sigmas: [(len(sigmas) - 2, 1.0)]))

    @hookimpl
    def register_metrics(self, register):
        register("every-metric", lambda: (lambda images, prompts: {"mean": images.mean().item()}))

    @hookimpl
    def register_callbacks(self, register):
        class StepCounter:
            def step_end(self, state, metrics):
                self.steps = getattr(self, "steps", 0) + 1

        register("every-callback", StepCounter)


def gate_plugin(*names):
    class P:
        @hookimpl
        def register_gates(self, register):
            for n in names:
                register(n, lambda: (lambda r_t, r_s: torch.ones_like(r_t)))

    return P()


def _plugins_json(capsys) -> list[dict]:
    rc = main(["plugins", "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def _by_name(entries):
    return {e["name"]: e for e in entries}


# ----------------------------------------------------------------------------- built-ins and listing


def test_builtins_are_plugins_registered_through_the_hooks(fresh_plugins):
    reg = fresh_plugins.get_registry()
    assert {"sigmoid", "hard", "constant"} <= set(reg.names("gates"))
    assert {"all", "last", "first", "explicit"} <= set(reg.names("horizons"))
    assert "toy" in reg.names("backbones") and "toy-brightness" in reg.names("rewards")
    assert reg.get("gates", "sigmoid").plugin == "rats_plugins.gates"
    assert reg.get("gates", "sigmoid").doc.startswith("sigmoid((R_T - R_S) / tau)")


def test_every_hook_is_called_and_listed(fresh_plugins, capsys):
    fresh_plugins.register_plugin(EveryHookPlugin(), name="every")
    reg = fresh_plugins.get_registry()
    for kind, name in [("backbones", "every-backbone"), ("rewards", "every-reward"), ("gates", "every-gate"),
                       ("horizons", "every-horizon"), ("metrics", "every-metric"), ("callbacks", "every-callback")]:
        assert reg.get(kind, name).plugin == "every"
    entry = _by_name(_plugins_json(capsys))["every"]
    assert entry["hooks"] == sorted(f"register_{k}" for k in KINDS)
    assert entry["components"]["metrics"] == ["every-metric"]
    assert entry["builtin"] is False and "error" not in entry
    fresh_plugins.unregister_plugin("every")
    with pytest.raises(UnknownComponentError):
        fresh_plugins.get_registry().get("gates", "every-gate")


def test_plugins_json_shape(fresh_plugins, capsys):
    entries = _plugins_json(capsys)
    gates = dict(_by_name(entries)["rats_plugins.gates"])
    # each component's option schema (what `rats plugins NAME` prints, as JSON schema)
    assert gates.pop("schemas")["gates"]["sigmoid"]["properties"]["tau"]["exclusiveMinimum"] == 0
    assert gates == {
        "name": "rats_plugins.gates",
        "builtin": True,
        "hooks": ["register_gates"],
        "components": {"gates": ["constant", "hard", "sigmoid"]},
    }
    for e in entries:
        assert set(e) <= {"name", "builtin", "hooks", "components", "schemas", "distribution", "version", "error"}


def test_plugins_table(fresh_plugins, capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["KIND", "NAME", "PLUGIN", "DESCRIPTION"]
    assert any(line.split()[:3] == ["gate", "sigmoid", "rats_plugins.gates"] for line in out.splitlines())


def test_plugins_json_subprocess_with_a_broken_distribution(tmp_path):
    """A real (if minimal) installed distribution whose entry point names a module that does not
    exist: `rats plugins --json` still exits 0, lists the built-ins and reports the broken one."""
    dist_info = tmp_path / "rats_broken-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: rats-broken\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[rats]\nbroken = rats_broken_no_such_module\n")
    env = {k: v for k, v in os.environ.items() if k != "RATS_LOAD_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "rats_core.cli", "plugins", "--json"], capture_output=True,
                          text=True, env=env, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    entries = _by_name(json.loads(proc.stdout))
    assert entries["rats_plugins.gates"]["components"]["gates"] == ["constant", "hard", "sigmoid"]
    broken = entries["rats-broken:broken"]
    assert broken["error"] == "failed to load: ModuleNotFoundError: No module named 'rats_broken_no_such_module'"
    assert broken["builtin"] is False and broken["components"] == {}
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- conflicts and broken plugins


def test_duplicate_names_name_both_plugins(fresh_plugins, capsys):
    fresh_plugins.register_plugin(gate_plugin("sigmoid"), name="copycat")
    with pytest.raises(DuplicateComponentError) as exc:
        fresh_plugins.get_registry()
    msg = str(exc.value)
    assert "gate 'sigmoid' is registered twice" in msg
    assert "rats_plugins.gates" in msg and "copycat" in msg and "RATS_LOAD_PLUGINS" in msg
    # the CLI: one error line, exit 2
    assert main(["plugins", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: gate 'sigmoid' is registered twice") and "Traceback" not in err


def test_duplicate_within_one_plugin(fresh_plugins):
    fresh_plugins.register_plugin(gate_plugin("twice", "twice"), name="clumsy")
    with pytest.raises(DuplicateComponentError, match="by clumsy and by clumsy"):
        fresh_plugins.get_registry()


def test_broken_plugins_are_recorded_and_the_rest_still_load(fake_entry_points, capsys):
    class RaisesInHook:
        @hookimpl
        def register_rewards(self, register):
            raise RuntimeError("no weights here")

    fake_entry_points += [
        FakeEntryPoint("broken", ImportError("No module named 'missing_dep'"), FakeDist("rats-broken", "0.1")),
        FakeEntryPoint("raiser", RaisesInHook(), FakeDist("rats-raiser", "0.2")),
        FakeEntryPoint("fine", gate_plugin("fine-gate"), FakeDist("rats-fine", "0.3")),
    ]
    from rats_core.registry import plugins

    reg = plugins.get_registry()
    assert reg.errors["rats-broken:broken"] == "failed to load: ImportError: No module named 'missing_dep'"
    assert reg.errors["rats-raiser:raiser"] == "raised in register_rewards: RuntimeError: no weights here"
    assert reg.get("gates", "fine-gate").plugin == "rats-fine:fine"
    assert "sigmoid" in reg.names("gates")

    entries = _by_name(_plugins_json(capsys))
    assert entries["rats-broken:broken"]["error"].startswith("failed to load: ImportError")
    assert entries["rats-raiser:raiser"]["error"].startswith("raised in register_rewards")
    assert entries["rats-raiser:raiser"]["distribution"] == "rats-raiser"
    assert entries["rats-fine:fine"].pop("schemas")["gates"]["fine-gate"]["type"] == "object"
    assert entries["rats-fine:fine"] == {
        "name": "rats-fine:fine", "builtin": False, "hooks": ["register_gates"],
        "components": {"gates": ["fine-gate"]}, "distribution": "rats-fine", "version": "0.3",
    }
    assert entries["rats_plugins.gates"]["components"]["gates"] == ["constant", "hard", "sigmoid"]

    # the human table says which plugins are broken, on stderr
    assert main(["plugins"]) == 0
    captured = capsys.readouterr()
    assert "! plugin rats-broken:broken: failed to load" in captured.err
    assert "fine-gate" in captured.out

    # and naming a component of a broken plugin says that plugins failed to load
    with pytest.raises(UnknownComponentError, match="Plugins that failed to load: .*rats-broken:broken"):
        reg.get("rewards", "broken-reward")


def test_invalid_registrations_are_recorded(fake_entry_points):
    class BadName:
        @hookimpl
        def register_gates(self, register):
            register("", lambda: None)

    class NotCallable:
        @hookimpl
        def register_gates(self, register):
            register("not-callable", 42)

    fake_entry_points += [FakeEntryPoint("badname", BadName()), FakeEntryPoint("notcallable", NotCallable())]
    from rats_core.registry import plugins

    errors = plugins.get_registry().errors
    assert "invalid name ''" in errors["badname"]
    assert "non-callable factory" in errors["notcallable"]


def test_misspelled_hook_is_reported_not_silently_ignored(fake_entry_points, fresh_plugins):
    class Typo:
        @hookimpl
        def register_gate(self, register):  # singular: not a hook
            register("typo-gate", lambda: None)

    fake_entry_points.append(FakeEntryPoint("typo", Typo(), FakeDist("rats-typo")))
    errors = fresh_plugins.get_registry().errors
    assert "unknown hook(s) register_gate" in errors["rats-typo:typo"]
    assert "register_gates" in errors["rats-typo:typo"]
    with pytest.raises(PluginError, match="unknown hook"):
        fresh_plugins.register_plugin(Typo(), name="typo-at-runtime")


def test_hook_with_wrong_argument_names_is_recorded(fake_entry_points):
    class WrongArgs:
        @hookimpl
        def register_gates(self, reg):  # must be called `register`
            pass

    fake_entry_points.append(FakeEntryPoint("wrongargs", WrongArgs()))
    from rats_core.registry import plugins

    assert plugins.get_registry().errors["wrongargs"].startswith("failed to load: PluginValidationError")


# ----------------------------------------------------------------------------- RATS_LOAD_PLUGINS


@pytest.mark.parametrize(
    "value, loaded",
    [
        (None, {"alpha-gate", "beta-gate"}),
        ("", set()),
        ("rats-alpha", {"alpha-gate"}),  # by distribution name
        ("beta", {"beta-gate"}),  # by entry-point name
        (" rats-alpha , beta ", {"alpha-gate", "beta-gate"}),
        ("something-else", set()),
    ],
)
def test_rats_load_plugins_restricts_external_plugins(fake_entry_points, monkeypatch, value, loaded):
    fake_entry_points += [
        FakeEntryPoint("alpha", gate_plugin("alpha-gate"), FakeDist("rats-alpha")),
        FakeEntryPoint("beta", gate_plugin("beta-gate"), FakeDist("rats-beta")),
    ]
    if value is not None:
        monkeypatch.setenv("RATS_LOAD_PLUGINS", value)
    from rats_core.registry import plugins

    names = set(plugins.get_registry().names("gates"))
    assert names & {"alpha-gate", "beta-gate"} == loaded
    assert {"sigmoid", "hard", "constant"} <= names, "built-ins always load"


# ----------------------------------------------------------------------------- lookup and options


def test_unknown_component_suggests_close_names(fresh_plugins):
    reg = fresh_plugins.get_registry()
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("gates", "sigmod")
    assert "unknown gate 'sigmod'. Did you mean 'sigmoid'?" in str(exc.value)
    assert "Registered: constant, hard, sigmoid" in str(exc.value)
    with pytest.raises(UnknownComponentError) as exc:
        reg.get("horizons", "zzzzzz")
    assert "Did you mean" not in str(exc.value) and "unknown horizon schedule 'zzzzzz'" in str(exc.value)


def _registry_with(factory, kind="gates", name="g") -> Registry:
    reg = Registry()
    reg.add(kind, name, factory, "test-plugin")
    return reg


def test_options_are_validated_from_the_signature():
    def factory(tau: Annotated[float, Field(gt=0)] = 1.0, mode: str = "a", *, n: int):
        return (tau, mode, n)

    reg = _registry_with(factory)
    assert reg.build("gates", "g", {"n": "3", "tau": 2}, "gate") == (2.0, "a", 3)
    for options, needle in [
        ({"n": 1, "tau": "abc"}, "gate.tau: Input should be a valid number"),
        ({"n": 1, "tau": 0}, "gate.tau: Input should be greater than 0"),
        ({"n": 1, "bogus": 1}, "gate.bogus: unknown option"),
        ({}, "gate.n: required option is missing"),
        ({"n": [1]}, "gate.n"),
    ]:
        with pytest.raises(ConfigError) as exc:
            reg.build("gates", "g", options, "gate")
        assert needle in str(exc.value), (options, str(exc.value))


def test_options_schema_is_json_schema():
    def factory(tau: Annotated[float, Field(gt=0)] = 1.0):
        return tau

    schema = _registry_with(factory).get("gates", "g").options_schema()
    assert schema["properties"]["tau"]["exclusiveMinimum"] == 0
    assert schema["properties"]["tau"]["default"] == 1.0


def test_var_keyword_factories_accept_extra_options_and_unannotated_accept_anything():
    reg = _registry_with(lambda a=1, **kw: (a, kw))
    assert reg.build("gates", "g", {"a": "x", "b": 2}) == ("x", {"b": 2})


def test_string_annotations_are_resolved():
    ns: dict[str, Any] = {}
    exec(textwrap.dedent("""
        from __future__ import annotations
        def factory(n: int = 1):
            return n
    """), ns)
    reg = _registry_with(ns["factory"])
    assert reg.build("gates", "g", {"n": "5"}) == 5
    with pytest.raises(ConfigError, match="gate.n"):
        reg.build("gates", "g", {"n": "five"}, "gate")


def test_factory_errors():
    def value_error(x: int = 1):
        raise ValueError("x must be odd")

    def bug():
        raise KeyError("oops")

    def weights():
        raise WeightsNotFoundError("no weights at /nowhere; pass backbone.path")

    with pytest.raises(ConfigError, match="^gate: x must be odd$"):
        _registry_with(value_error).build("gates", "g", {}, "gate")
    with pytest.raises(PluginError, match=r"gate 'g' \(plugin test-plugin\) failed to build: KeyError"):
        _registry_with(bug).build("gates", "g", {}, "gate")
    with pytest.raises(WeightsNotFoundError, match="no weights"):
        _registry_with(weights).build("gates", "g", {}, "gate")


def test_every_registered_component_has_an_option_schema(fresh_plugins):
    reg = fresh_plugins.get_registry()
    for kind in KINDS:
        for name in reg.names(kind):
            schema = reg.get(kind, name).options_schema()
            assert isinstance(schema.get("properties", {}), dict), (kind, name)


# ----------------------------------------------------------------------------- a real third-party package

THIRD_PARTY_PYPROJECT = """\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "rats-thirdparty"
version = "0.0.1"
dependencies = ["rats"]

[project.entry-points.rats]
thirdparty = "rats_thirdparty"

[tool.setuptools]
packages = ["rats_thirdparty"]
"""

THIRD_PARTY_MODULE = '''\
"""A minimal third-party rats plugin: one reward, one gate."""
from typing import Annotated

import torch
from pydantic import Field

from rats_core import hookimpl
# written against the flat layout of rats 0.1.0 (docs/plugins.md before rats_core was cut into layers)
from rats_core.errors import WeightsNotFoundError  # noqa: F401
from rats_core.interfaces import check_reward_output
from rats_core.sigmas import x0_from_eps


def redness(weight: float = 1.0):
    """Mean of the red channel."""
    def score(images, prompts):
        out = weight * images[:, 0].mean(dim=(1, 2))
        check_reward_output("thirdparty-reward", out, len(prompts))
        return out

    assert torch.equal(x0_from_eps(torch.ones(1), torch.zeros(1), 0.0), torch.ones(1))
    return score


def coin(p: Annotated[float, Field(ge=0, le=1)] = 0.5):
    """A constant gate p."""
    return lambda r_t, r_s: torch.full_like(r_t, p)


@hookimpl
def register_rewards(register):
    register("thirdparty-reward", redness)


@hookimpl
def register_gates(register):
    register("thirdparty-gate", coin)
'''

THIRD_PARTY_CONFIG = """\
# Toy run with the third-party reward and gate.
backbone: {name: toy, resolution: 8}
student: {steps: 2}
teacher: {steps: 4}
rewards:
  - {name: toy-brightness, weight: 1.0}
  - {name: thirdparty-reward, weight: 0.5}
gate: {name: thirdparty-gate, p: 0.3}
train: {steps: 2, batch_size: 2}
"""


def _site_packages(python: str) -> str:
    return subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def thirdparty_venv(tmp_path_factory):
    """A throwaway venv that sees this environment's packages and has rats-thirdparty installed.

    ``--system-site-packages`` would expose the *base* interpreter's packages, not this venv's, so
    the new venv gets a .pth that adds our site-packages with ``site.addsitedir`` (which also runs
    the editable-install hook of rats). pip installs the package offline, without build isolation.
    """
    root = tmp_path_factory.mktemp("thirdparty")
    pkg = root / "rats-thirdparty"
    (pkg / "rats_thirdparty").mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(THIRD_PARTY_PYPROJECT)
    (pkg / "rats_thirdparty" / "__init__.py").write_text(THIRD_PARTY_MODULE)

    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python"))
    ours = _site_packages(sys.executable)
    Path(_site_packages(python), "_rats_parent_env.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    proc = subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                           "--no-build-isolation", str(pkg)], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"pip install of the third-party package failed:\n{proc.stdout}\n{proc.stderr}")
    cfg = root / "thirdparty.yaml"
    cfg.write_text(THIRD_PARTY_CONFIG)
    return python, cfg


def _run_cli(python, *args, **env_overrides):
    env = {k: v for k, v in os.environ.items() if k != "RATS_LOAD_PLUGINS"}
    env.update(env_overrides)
    return subprocess.run([python, "-m", "rats_core.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env, cwd=REPO)


def test_third_party_package_installed_for_real(thirdparty_venv):
    python, cfg = thirdparty_venv

    proc = _run_cli(python, "plugins", "--json")
    assert proc.returncode == 0, proc.stderr
    entry = _by_name(json.loads(proc.stdout))["rats-thirdparty:thirdparty"]
    assert entry["distribution"] == "rats-thirdparty" and entry["version"] == "0.0.1"
    assert entry["builtin"] is False and "error" not in entry
    assert entry["components"] == {"rewards": ["thirdparty-reward"], "gates": ["thirdparty-gate"]}
    assert entry["hooks"] == ["register_gates", "register_rewards"]

    proc = _run_cli(python, "validate", str(cfg))
    assert proc.returncode == 0, proc.stderr
    assert "thirdparty-reward" in proc.stdout

    # it trains and reports unchanged (old module paths answer with a DeprecationWarning, nothing else)
    proc = subprocess.run([python, "-m", "rats_core.cli", "run", str(cfg), f"output_dir={cfg.parent / 'run'}"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cfg.parent / "run" / "report.md").read_text().splitlines()[2].startswith("Verdict:")

    # RATS_LOAD_PLUGINS="" turns it off: the config no longer validates
    proc = _run_cli(python, "validate", str(cfg), RATS_LOAD_PLUGINS="")
    assert proc.returncode == 2 and "rewards.1.name: unknown reward 'thirdparty-reward'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_descriptions_are_whole_first_paragraphs_without_rst():
    from rats_core.registry.catalogue import summary_line

    doc = "A checkpoint every ``every`` optimizer steps (see\n:class:`~rats_core.training.trainer.Trainer`).\n\nMore text."
    assert summary_line(doc) == "A checkpoint every `every` optimizer steps (see `rats_core.training.trainer.Trainer`)."
    assert summary_line("") == ""

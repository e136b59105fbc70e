"""Model weights: probe the Hugging Face Hub once, and name every missing model in one message.

Without network, each model loader would otherwise discover it on its own: the backbone after a quick
probe, a reward after ~25 s of the hub client's retries, one model per run. Instead:

* :func:`start_hub_probe` (called by the command line when it starts) opens one TCP connection to
  the Hub in the background; :func:`settle_hub` (called before any component is built, by
  :func:`rats_core.config.check_components`) waits for it — at most 3 s — and, when the Hub did not
  answer, switches this process to offline mode (``HF_HUB_OFFLINE=1``), so every loader looks in the
  local cache only and fails at once;
* when a component's weights are missing, :func:`survey_missing` builds the config's other
  components with weights (backbone, rewards, metrics) that were not tried yet and gathers every
  :class:`~rats_core.errors.WeightsNotFoundError` into one message: what to download and which option
  points at it, per model;
* :func:`preflight` (``rats-run``, before the trainer, torch and the model libraries are imported) asks each
  component's light ``missing_weights(**options)`` check, where its factory has one (every built-in with
  weights does; docs/plugins.md), so a run without weights names every missing model in a second or two
  instead of after importing and building the models;
* :func:`weights_report` is what ``rats validate`` prints: present, missing or unchecked, per model.
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from rats_core.errors import RatsError, WeightsNotFoundError

PROBE_TIMEOUT = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
_TRUE = {"1", "ON", "YES", "TRUE"}

_probe: dict[str, Any] = {"thread": None, "reachable": None, "settled": False}
_lock = threading.Lock()


def hub_offline() -> bool:
    """Offline mode is set in the environment (or was switched on by :func:`settle_hub`)."""
    return any((os.environ.get(k) or "").strip().upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _endpoint() -> tuple[str, int]:
    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return url.hostname or "huggingface.co", url.port or (443 if url.scheme != "http" else 80)


def _probe_now(timeout: float = PROBE_TIMEOUT) -> bool:
    host, port = _endpoint()
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def reset_probe() -> None:
    """Forget the probe's result (tests)."""
    _probe.update({"thread": None, "reachable": None, "settled": False, "cfg": None})


def start_hub_probe() -> None:
    """Probe the Hub in a background thread (nothing to do when offline mode is already set or a proxy
    is configured: then the hub client is trusted)."""
    with _lock:
        if _probe["thread"] is not None or hub_offline() or any(os.environ.get(k) for k in _PROXY_VARS):
            return

        def run() -> None:
            _probe["reachable"] = _probe_now()

        t = threading.Thread(target=run, name="rats-hub-probe", daemon=True)
        _probe["thread"] = t
        t.start()


def settle_hub(start: bool = True) -> bool | None:
    """Wait for the probe (at most :data:`PROBE_TIMEOUT` s); if the Hub did not answer, switch this
    process to the Hugging Face offline mode. Returns whether the Hub is reachable (None: not probed,
    offline mode or a proxy)."""
    if _probe["settled"]:
        return _probe["reachable"]
    if start:
        start_hub_probe()
    t = _probe["thread"]
    if t is None:
        return None
    t.join(PROBE_TIMEOUT + 0.5)
    _probe["settled"] = True
    if _probe["reachable"] is not True:
        _probe["reachable"] = False
        go_offline()
    return _probe["reachable"]


def go_offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # huggingface_hub reads the variable once, at import
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover - not installed
        pass


def remember_config(cfg: Any) -> None:
    """The config whose components are about to be built (what :func:`survey_missing` surveys when the
    command fails on missing weights)."""
    _probe["cfg"] = cfg


def complete(exc: WeightsNotFoundError) -> WeightsNotFoundError:
    """``exc`` extended with every other missing model of the config being run, if one is known."""
    cfg = _probe.get("cfg")
    if cfg is None:
        return exc
    try:
        return survey_missing(cfg, exc)
    except Exception:  # noqa: BLE001 - the survey must never hide the original error
        return exc


def offline_reason() -> str:
    """Why nothing is downloaded, for the loaders' messages: ``the Hub did not answer`` when rats switched
    offline mode on itself after its probe, ``HF_HUB_OFFLINE is set`` when the user did."""
    if _probe["reachable"] is False:
        return "the Hub did not answer"
    return "HF_HUB_OFFLINE is set"


def hub_status_line() -> str:
    if _probe["reachable"] is False:
        return "the Hugging Face Hub did not answer from here (probed once), so nothing can be downloaded"
    if hub_offline():
        return "HF_HUB_OFFLINE is set, so nothing is downloaded"
    return ""


# ----------------------------------------------------------------------------- the config's models


#: component kinds whose factories may load weights
WEIGHTED_KINDS = ("backbones", "rewards", "metrics")


def weighted_sections(cfg: Any) -> list[tuple[str, str, Any]]:
    """``(where, kind, section)`` of the config's components that may need weights, in build order."""
    out: list[tuple[str, str, Any]] = [("backbone", "backbones", cfg.backbone)]
    out += [(f"rewards.{i}", "rewards", r) for i, r in enumerate(cfg.rewards)]
    out += [(f"eval.metrics.{i}", "metrics", m) for i, m in enumerate(cfg.eval.metrics)]
    return out


def _resolve_paths(cfg: Any, options: dict[str, Any]) -> dict[str, Any]:
    """A relative ``path`` option that exists next to the config is resolved against it (as the trainer does)."""
    out = dict(options)
    p = out.get("path")
    if isinstance(p, str) and not os.path.isabs(p) and (p.startswith(".") or os.sep in p):
        candidate = cfg.resolve_path(p)
        if candidate.exists() and not os.path.exists(p):
            out["path"] = str(candidate)
    return out


def _build(cfg: Any, where: str, kind: str, section: Any) -> Any:
    from rats_core.registry.plugins import get_registry

    options = _resolve_paths(cfg, section.options) if kind != "metrics" else section.options
    return get_registry().build(kind, section.name, options, where)


def quick_missing(cfg: Any, where: str, kind: str, section: Any) -> list[str] | None:
    """The component's light check (its factory's ``missing_weights(**options)``, defaults filled in): the
    messages of what its weights miss, ``[]`` when nothing is plainly missing, ``None`` when it has no check
    (or the check failed: the full build will tell)."""
    import inspect

    from rats_core.registry.plugins import get_registry

    try:
        factory = get_registry().get(kind, section.name).factory
        check = getattr(factory, "missing_weights", None)
        if check is None:
            return None
        options = _resolve_paths(cfg, section.options) if kind != "metrics" else dict(section.options)
        bound = inspect.signature(factory).bind_partial(**options)
        bound.apply_defaults()
        return [str(m) for m in check(**bound.arguments)]
    except Exception:  # noqa: BLE001 - a light check must never stop a run the full build might allow
        return None


def preflight(cfg: Any) -> None:
    """Raise one WeightsNotFoundError naming every model of ``cfg`` whose weights are plainly missing, as
    the components' light checks see it (nothing is imported or built); do nothing when none is. A component
    without a light check is built to find out only when another one is missing, so the message stays
    complete."""
    settle_hub()
    sections = weighted_sections(cfg)
    found = [(where, kind, section, quick_missing(cfg, where, kind, section)) for where, kind, section in sections]
    if not any(msgs for *_, msgs in found):
        return
    missing: list[tuple[str, str]] = []
    for where, kind, section, msgs in found:
        if msgs is None:  # no light check: build it (only this one) to know
            try:
                del_built = _build(cfg, where, kind, section)
                del del_built
            except WeightsNotFoundError as exc:
                missing.append((where, _body(where, str(exc))))
            except Exception:  # noqa: BLE001 - reported on its own once the weights are there
                pass
            continue
        if msgs:
            missing.append((where, _joined(where, msgs)))
    why = hub_status_line()
    if len(missing) == 1:
        where, text = missing[0]
        err = WeightsNotFoundError(f"{where}: {text}")
    else:
        lines = [f"{len(missing)} models are missing" + (f" ({why})" if why else "") + "; for each, what to "
                 "get and the option that points at it:"]
        lines += [f"  {where}: {text}" for where, text in missing]
        err = WeightsNotFoundError("\n".join(lines))
    err.surveyed = True  # type: ignore[attr-defined]
    raise err


def _joined(where: str, messages: list[str]) -> str:
    """One model's missing parts in one entry (PickScore's weights and its processor: one model)."""
    return " Also: ".join(_body(where, m) for m in messages)


def _body(where: str, text: str) -> str:
    """A loader's message without its ``where:`` prefix, its example override pointed at ``where``
    (reward plugins write their hint for ``rewards.0``)."""
    body = text[len(where) + 2:] if text.startswith(where + ": ") else text
    if where.startswith("rewards.") and where != "rewards.0":
        body = body.replace("rewards.0.", where + ".")
    return body.replace(" (0 = the reward's index in `rewards`)", "")


def _where(exc: BaseException) -> str:
    text = str(exc)
    head = text.split(":", 1)[0]
    return head if head.startswith(("backbone", "rewards.", "eval.metrics.")) else ""


@dataclass
class WeightStatus:
    where: str
    component: str
    status: str  # present | missing | unchecked
    detail: str = ""


def survey_missing(cfg: Any, first: WeightsNotFoundError) -> WeightsNotFoundError:
    """One error naming every missing model of ``cfg``: ``first`` plus those of the components after it
    (the ones before it were built already). Returns ``first`` unchanged when nothing else is missing."""
    if getattr(first, "surveyed", False):
        return first
    settle_hub()
    failed = _where(first)
    sections = weighted_sections(cfg)
    names = [w for w, _, _ in sections]
    start = names.index(failed) + 1 if failed in names else 0
    missing = [(failed or "?", str(first))]
    for where, kind, section in sections[start:]:
        if where == failed:
            continue
        try:
            built = _build(cfg, where, kind, section)
            del built
        except WeightsNotFoundError as exc:
            missing.append((where, str(exc)))
        except (RatsError, Exception):  # reported on its own once the weights are there
            continue
    if len(missing) == 1:
        first.surveyed = True  # type: ignore[attr-defined]
        return first
    why = hub_status_line()
    lines = [f"{len(missing)} models are missing" + (f" ({why})" if why else "") + "; for each, what to get "
             "and the option that points at it:"]
    for where, text in missing:
        lines.append(f"  {where}: {_body(where, text)}")
    err = WeightsNotFoundError("\n".join(lines))
    err.surveyed = True  # type: ignore[attr-defined]
    return err


def weights_report(cfg: Any) -> list[WeightStatus]:
    """Build each component that may need weights once: ``present`` when it builds, ``missing`` with
    the loader's message when it raises WeightsNotFoundError, ``unchecked`` when it fails otherwise."""
    settle_hub()
    out = []
    for where, kind, section in weighted_sections(cfg):
        quick = quick_missing(cfg, where, kind, section)
        if quick:  # plainly missing: said without loading anything
            out.append(WeightStatus(where, section.name, "missing", _joined(where, quick)))
            continue
        try:
            built = _build(cfg, where, kind, section)
            del built
            out.append(WeightStatus(where, section.name, "present"))
        except WeightsNotFoundError as exc:
            out.append(WeightStatus(where, section.name, "missing", _body(where, str(exc))))
        except Exception as exc:  # noqa: BLE001 - any other failure: say so, do not hide it as "present"
            out.append(WeightStatus(where, section.name, "unchecked", f"{type(exc).__name__}: {exc}"[:300]))
    return out


def weights_verdict(statuses: list[WeightStatus] | None) -> str:
    """``weights: 4 of 4 missing`` / ``weights: 3 present`` / ``weights: unchecked (--no-weights)``: the
    weights' part of ``rats validate``'s first line."""
    if statuses is None:
        return "weights: unchecked (--no-weights)"
    counts = {k: sum(s.status == k for s in statuses) for k in ("missing", "unchecked", "present")}
    if not statuses:
        return "weights: none needed"
    if counts["missing"]:
        text = f"weights: {counts['missing']} of {len(statuses)} missing"
    elif counts["unchecked"]:
        text = f"weights: {counts['unchecked']} of {len(statuses)} could not be checked"
    else:
        return f"weights: {len(statuses)} present"
    if counts["missing"] and counts["unchecked"]:
        text += f", {counts['unchecked']} could not be checked"
    return text


def print_weights_report(cfg: Any, skip: bool = False, file: Any = None,
                         statuses: list[WeightStatus] | None = None) -> int:
    """What ``rats validate`` prints after its first line: one line per model (``statuses``, else
    :func:`weights_report` of ``cfg``). Exit status 2 (a WeightsNotFoundError naming every missing
    model) when any is missing."""
    import sys

    file = file or sys.stdout
    if skip:
        return 0
    if statuses is None:
        statuses = weights_report(cfg)
    print("weights (each model built once; present: it loaded, or needs no weights):", file=file)
    for s in statuses:
        note = f" ({s.detail.splitlines()[0][:160]})" if s.status == "unchecked" and s.detail else ""
        print(f"  {s.where} ({s.component}): {s.status}{note}", file=file)
    missing = [s for s in statuses if s.status == "missing"]
    if missing:
        why = hub_status_line()
        lines = [f"{len(missing)} of {len(statuses)} models are missing" + (f" ({why})" if why else "")
                 + "; for each, what to get and the option that points at it:"]
        lines += [f"  {s.where}: {s.detail}" for s in missing]
        err = WeightsNotFoundError("\n".join(lines))
        err.surveyed = True  # type: ignore[attr-defined]
        raise err
    return 0

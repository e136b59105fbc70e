"""The public plugin API: one hook per component kind.

Each hook receives a ``register`` callable. A plugin calls ``register(name, factory)`` once for every
component it adds. ``factory`` is called with the component's config options as keyword arguments
and returns the component; its signature *is* the option schema (type annotations and defaults are
validated with pydantic, unknown options are rejected), so::

    from rats_core import hookimpl

    @hookimpl
    def register_gates(register):
        def margin_gate(margin: float = 0.1):
            \"\"\"1 where the teacher beats the student by more than `margin`.\"\"\"
            return lambda r_t, r_s: (r_t > r_s + margin).float()
        register("my-margin", margin_gate)

The component interfaces are documented in :mod:`rats_core.registry.interfaces`.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "rats"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backbones(register):
    """Register backbones: diffusion/flow models the student is trained from.

    ``register(name, factory)``; ``factory(**backbone_options)`` returns a
    :class:`rats_core.registry.interfaces.Backbone`. ``backbone.path`` and ``backbone.resolution`` are passed as
    ``path=`` and ``resolution=`` along with any other options under ``backbone:``.

    Example::

        @hookimpl
        def register_backbones(register):
            register("my-unet", lambda path, resolution=512, **kw: MyBackbone(path, resolution))
    """


@hookspec
def register_rewards(register):
    """Register reward models: differentiable preference scores of images for prompts.

    ``factory(**options)`` returns a :class:`rats_core.registry.interfaces.Reward`:
    ``reward(images[B,3,H,W] in [0,1], prompts) -> Tensor[B]``, differentiable in ``images``.

    Example::

        @hookimpl
        def register_rewards(register):
            register("brightness", lambda: (lambda images, prompts: images.mean(dim=(1, 2, 3))))
    """


@hookspec
def register_gates(register):
    """Register reward-aware gates: how strongly to match the teacher, per sample.

    ``factory(**options)`` returns a :class:`rats_core.registry.interfaces.Gate`:
    ``gate(teacher_reward[B], student_reward[B]) -> Tensor[B]`` in ``[0, 1]``. Called without gradient.

    Example::

        @hookimpl
        def register_gates(register):
            def always(c: float = 1.0):
                return lambda r_t, r_s: torch.full_like(r_t, c)
            register("always", always)
    """


@hookspec
def register_horizons(register):
    """Register horizon schedules: which student steps are matched to the teacher, with what weight.

    ``factory(**options)`` returns a :class:`rats_core.registry.interfaces.HorizonSchedule`:
    ``schedule(student_sigmas[K+1]) -> list[(step_index, weight)]`` with ``0 <= step_index < K``.

    Example::

        @hookimpl
        def register_horizons(register):
            register("first", lambda: (lambda sigmas: [(0, 1.0)]))
    """


@hookspec
def register_metrics(register):
    """Register evaluation metrics: set-level measures the training never sees (e.g. a judge's
    accuracy or a Fréchet distance to real images), reported by ``rats eval`` and the end-of-run report.

    ``factory(**options)`` returns a :class:`rats_core.registry.interfaces.Metric`:
    ``metric(images[B,3,H,W] in [0,1], prompts) -> dict[str, float]`` over the whole evaluation set.

    Example::

        @hookimpl
        def register_metrics(register):
            register("mean-brightness", lambda: (lambda images, prompts: {"brightness": images.mean().item()}))
    """


@hookspec
def register_callbacks(register):
    """Register training callbacks: loggers, trackers, extra evaluations — anything that reacts to the
    training events ``fit_start``, ``step_end``, ``eval_end``, ``checkpoint_saved``, ``fit_end`` and
    ``exception`` (see :mod:`rats_core.training.callbacks`). A config turns them on with a ``callbacks:`` list of
    ``{name: ..., <options>}``.

    ``factory(**options)`` returns an object with any subset of those methods, each called as
    ``method(state, ...)``; rank 0 only unless it sets ``rank_zero_only = False``.

    Example::

        @hookimpl
        def register_callbacks(register):
            class PrintLoss:
                def step_end(self, state, metrics):
                    print(state.step, metrics["loss"])
            register("print-loss", PrintLoss)
    """

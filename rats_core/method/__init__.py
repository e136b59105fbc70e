"""The paper's maths: RATS -- Reward-Aware Trajectory Shaping (docs/method.md, shared/METHOD.md).

- ``sigmas``: noise levels, σ alignment of student and teacher steps, x0 from each parametrisation;
- ``rollout``: sampling a trajectory in K (student) or N (teacher) steps, with truncated backprop;
- ``shaping``: horizon weights and their checks;
- ``objective``: the RATS loss: trajectory matching at aligned horizons, the reward-aware gate, rewards;
- ``teacher``: the EMA teacher and its cache of targets;
- ``rewards``: several rewards weighted into one, reward frames of a video.

May import: ``rats_core.errors``, ``rats_core.timing``, ``rats_core.parallel``, ``rats_core.registry``.
Never the engine (``training``), evaluation or the CLI: the maths runs without them.
"""

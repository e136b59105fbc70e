"""The engine that runs the method: the training loop and what keeps a run safe.

- ``trainer``: setup → train → save_checkpoint → cleanup, under DeepSpeed;
- ``engine``: the DeepSpeed config, learning-rate schedule, ZeRO-3 loading options;
- ``components``: building a config's backbone, rewards, gate, horizons; LoRA;
- ``precision``: the dtype/autocast policy; ``checkpoint``: atomic checkpoints and exact resume;
- ``run_folder``: the run folder and its lock; ``signals``: SIGTERM/SIGINT → save and stop;
- ``ranks``: a multi-rank job's shared-folder check, the watch on the other ranks, the line when one dies;
- ``callbacks``: events and the callback list; ``progress``: progress lines and bars;
- ``threads``: the CPU thread policy; ``gate_check``: the warning when the gate never leaves 0.5.

May import: ``rats_core.method``, ``rats_core.parallel``, ``rats_core.registry``, the top-level helpers.
Never ``evaluation`` or ``cli``: evaluation runs from the built-in callbacks (plugins/callbacks.py).
Importing this package imports no torch (``rats_core/__init__`` uses ``threads`` before torch).
"""

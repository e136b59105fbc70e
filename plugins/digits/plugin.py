"""The digits world as a rats plugin: backbone ``digits``, rewards ``digit-confidence`` and
``digit-sharpness``, metrics ``digit-judge`` and ``digit-fid``. See ``experiments/digits.yaml``."""

from __future__ import annotations

from rats_core import hookimpl

from .backbone import digits
from .metrics import digit_fid, digit_judge
from .rewards import digit_confidence, digit_sharpness


@hookimpl
def register_backbones(register):
    register("digits", digits)


@hookimpl
def register_rewards(register):
    register("digit-confidence", digit_confidence)
    register("digit-sharpness", digit_sharpness)


@hookimpl
def register_metrics(register):
    register("digit-judge", digit_judge)
    register("digit-fid", digit_fid)

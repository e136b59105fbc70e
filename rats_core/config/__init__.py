"""The experiment configuration: one YAML file, validated by pydantic, with ``key=value`` overrides.

Public keys (stable names): ``backbone.name``, ``backbone.path``, ``backbone.resolution``,
``student.steps`` (K), ``teacher.steps`` (N), ``teacher.kind`` (``ema`` | ``frozen``), ``gate.name``,
``horizons.name``, ``rewards``, ``train.steps``, ``train.batch_size``, ``output_dir``, ``seed``.
Every section is documented field by field below and in docs/config.md.

``schema``: the sections as pydantic models; ``loading``: files, ``base:`` composition, overrides and validation.
Everything public is importable from here (``from rats_core.config import RatsConfig, load_config``).

May import: ``rats_core.registry``, ``rats_core.weights``, ``rats_core.prompts``, ``rats_core.errors``.
"""

from rats_core.config.loading import (
    MAX_BASE_DEPTH,
    MAX_CONFIG_VALUES,
    absolutize_inputs,
    apply_overrides,
    check_components,
    check_plain_data,
    drop_foreign_options,
    load_config,
    merge_config,
    read_config_data,
    read_yaml,
    validate_config,
)
from rats_core.config.schema import (
    BackboneConfig,
    CallbackConfig,
    DataConfig,
    EvalConfig,
    GateConfig,
    HorizonsConfig,
    LoraConfig,
    LossConfig,
    Margins,
    MetricConfig,
    RatsConfig,
    RewardConfig,
    StudentConfig,
    TeacherConfig,
    TrainConfig,
)

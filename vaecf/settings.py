"""All settings, in sections, loaded with one precedence.

Precedence (highest first): command-line flag > environment ``VAECF_<SECTION>__<KEY>`` >
``--config FILE`` (default ``./settings.toml`` when present) > the defaults below.
``settings.toml`` at the repository root lists every key with a one-line comment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from vaecf.errors import VaecfError

BackendChoice = Literal["auto", "cpu", "gpu"]


ENV_PREFIX = "VAECF_"


class _Section(BaseModel):
    # No setting may be nan or ±inf: `--lr inf` would train to NaN weights "successfully".
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """`epochs = true` in TOML is a boolean, which pydantic would take as 1: refuse a
        boolean wherever the setting is not one (strict mode cannot be used instead: values
        from the environment arrive as text)."""
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and bool not in (annotation, *get_args(annotation)):
            raise ValueError("must be a number or text, not true/false")
        return value

    @field_validator("*", mode="after")
    @classmethod
    def _int64(cls, value: Any) -> Any:
        """Whole numbers end up in NumPy and TensorFlow as int64: beyond it, a setting would
        crash there (OverflowError) instead of being refused here."""
        for number in value if isinstance(value, list) else [value]:
            if isinstance(number, int) and not isinstance(number, bool) and \
                    not -(2 ** 63) <= number < 2 ** 63:
                raise ValueError(f"must be below 2**63 = {2 ** 63:,}")
        return value


class PrepareSettings(_Section):
    """``vaecf prepare``: reading, filtering and splitting an interaction file."""

    user_col: str = "userId"
    item_col: str = "movieId"
    rating_col: str | None = None
    min_rating: float | None = None
    sep: str | None = None
    header: bool = True
    val_users: float = Field(0.1, gt=0)
    test_users: float = Field(0.1, gt=0)
    max_heldout_users: int = Field(10_000, ge=1)
    holdout_fraction: float = Field(0.2, gt=0, lt=1)
    min_user_interactions: int = Field(5, ge=1)
    min_item_interactions: int = Field(1, ge=1)
    seed: int = Field(0, ge=0)
    shards: int = Field(1, ge=1)
    backend: BackendChoice = "auto"

    @field_validator("val_users", "test_users")
    @classmethod
    def _count_or_fraction(cls, value: float) -> float:
        if value >= 1 and value != int(value):
            raise ValueError("must be a whole number of users (>= 1) or a fraction (< 1)")
        return value


ModelName = Literal["multvae", "recvae"]


class ModelSettings(_Section):
    """Which model, and the Mult-VAE architecture (Liang et al. 2018, section 2).

    ``hidden``, ``latent`` and ``dropout`` are RecVAE's too (encoder width, latent dimension,
    input dropout of its encoder epochs); ``activation`` and ``noise_std`` are Mult-VAE's only.
    RecVAE's own settings are in :class:`RecVAESettings`.
    """

    name: ModelName = "multvae"
    hidden: int = Field(600, ge=1)
    latent: int = Field(200, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    activation: Literal["tanh", "relu", "sigmoid", "elu", "selu"] = "tanh"
    # Standard deviation of the reparameterisation noise ε while training (z = mu + ε·σ).
    # 1 is the paper's sampling; 0.01 (RecBole's) is better on validation NDCG@100 on every
    # dataset of docs/accuracy.md. Runs written before this key existed used 1.
    noise_std: float = Field(0.01, ge=0)


class TrainSettings(_Section):
    """``vaecf train``: optimisation schedule and runtime."""

    # Unset: the automatic schedule of vaecf/training/schedule.py (β planned over
    # plan_epochs, stop by validation once β reached its cap, go on while improving up to
    # max_epochs); set: exactly this many epochs.
    epochs: int | None = Field(None, ge=1)
    plan_epochs: int = Field(200, ge=1)
    max_epochs: int = Field(1000, ge=1)
    batch_size: int = Field(500, ge=1)
    lr: float = Field(1e-3, gt=0)
    anneal_cap: float = Field(0.2, ge=0)
    anneal_steps: int | None = Field(None, ge=1)
    # Without anneal_steps: β reaches anneal_cap after this share of the planned epochs'
    # steps (epochs, or plan_epochs with the automatic schedule).
    anneal_fraction: float = Field(0.5, gt=0, le=1)
    validate_every: int = Field(1, ge=1)
    # Validations without a better NDCG@100 that stop training. Unset: 30 epochs' worth with
    # the automatic schedule, never with a fixed --epochs.
    patience: int | None = Field(None, ge=1)
    seed: int = Field(0, ge=0)
    amp: bool = False
    xla: bool = False
    backend: BackendChoice = "auto"
    checkpoint_every: int = Field(10, ge=1)


class RecVAESettings(_Section):
    """RecVAE (Shenbin et al., WSDM 2020); used when ``model.name = "recvae"``.

    Defaults are the reference implementation's (github.com/ilya-shenbin/RecVAE).
    """

    encoder_layers: int = Field(5, ge=1)
    # KL weight of user u: gamma * |x_u| (their number of interactions), constant in training.
    gamma: float = Field(0.005, ge=0)
    # One cycle: this many epochs updating only the encoder (input dropout, prior fixed), then
    # this many updating only the decoder (no dropout); the prior's posterior component is
    # the encoder as it was at the start of the cycle.
    encoder_epochs: int = Field(3, ge=1)
    decoder_epochs: int = Field(1, ge=1)
    # Mixture weights of the composite prior: N(0, I), previous posterior, wide N(0, e^wide).
    prior_weights: list[float] = Field(default_factory=lambda: [0.15, 0.75, 0.1])
    wide_logvar: float = 10.0
    layer_norm_eps: float = Field(0.1, gt=0)

    @field_validator("prior_weights")
    @classmethod
    def _mixture(cls, value: list[float]) -> list[float]:
        if len(value) != 3 or min(value) < 0 or abs(sum(value) - 1) > 1e-6:
            raise ValueError("must be 3 non-negative weights (standard, previous posterior, "
                             "wide) summing to 1")
        return value


class EvaluateSettings(_Section):
    """``vaecf test`` and validation during training."""

    ks: list[int] = Field(default_factory=lambda: [20, 50, 100])
    batch_size: int = Field(2048, ge=1)


class Settings(BaseSettings):
    """Every setting vaecf reads, one section per stage."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", toml_file=None
    )

    prepare: PrepareSettings = PrepareSettings()
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()
    recvae: RecVAESettings = RecVAESettings()
    evaluate: EvaluateSettings = EvaluateSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Earlier sources win: flags (init kwargs) > environment > TOML file > defaults.
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls)


DEFAULT_CONFIG = Path("settings.toml")

# What runs written before a key existed used, per section: a stored settings.json without the
# key is read with this value, not today's default (see RunDir.settings).
LEGACY_VALUES: dict[str, dict[str, Any]] = {
    "model": {"noise_std": 1.0, "name": "multvae"},
    "train": {"anneal_fraction": 0.5},
}


def _env_settings() -> dict[str, str]:
    """The environment's ``VAECF_<SECTION>__<KEY>`` variables, by name (other ``VAECF_``
    variables, such as an API key's, are not settings)."""
    return {name: value for name, value in os.environ.items()
            if name.upper().startswith(ENV_PREFIX) and "__" in name}


def _check_env_sections() -> None:
    """An unknown section in a variable's name is as wrong as an unknown key in a known one
    (which pydantic refuses), instead of being silently ignored."""
    sections = list(Settings.model_fields)
    for name in _env_settings():
        section = name[len(ENV_PREFIX):].split("__", 1)[0].lower()
        if section not in sections:
            raise VaecfError(f"environment variable {name}: unknown settings section "
                             f"{section!r} (sections: {', '.join(sections)})")


def _env_source(section: str, key: str | None = None) -> str | None:
    """The environment variable that set ``section`` (``.key``), if one did."""
    wanted = f"{ENV_PREFIX}{section}" + (f"__{key}" if key else "")
    for name in _env_settings():
        if name.upper() == wanted.upper() or (key is None and name.upper().startswith(
                wanted.upper() + "__")):
            return name
    return None


def _describe(error: ValidationError, config: Path | None) -> str:
    first = error.errors()[0]
    loc = [str(part) for part in first["loc"]]
    key = ".".join(loc)
    value = first.get("input")
    variable = _env_source(loc[0], loc[1]) if len(loc) > 1 else None
    if variable is not None:
        where = f" (from environment variable {variable})"
    else:
        where = f" (from {config})" if config is not None else ""
    shown = "" if isinstance(value, dict) else f" = {value!r}"
    return f"invalid setting {key}{shown}{where}: {first['msg']}"


def _describe_env(error: SettingsError) -> str:
    """pydantic-settings' "error parsing value for field X from source EnvSettingsSource",
    with the variable and its value named."""
    text = str(error)
    for section in Settings.model_fields:
        if f'field "{section}"' in text and (name := _env_source(section)) is not None:
            return (f"environment variable {name} = {os.environ[name]!r}: cannot be read as "
                    "this setting's type (lists are written as JSON, e.g. [20, 100])")
    return f"cannot read the settings from the environment: {text}"


def load_settings(config: Path | None = None, **flags: dict[str, Any]) -> Settings:
    """Build the effective settings.

    Args:
        config: a TOML file; ``None`` uses ``./settings.toml`` if it exists.
        **flags: per-section dicts of values given on the command line, e.g.
            ``train={"epochs": 5}``; keys whose value is ``None`` were not given and are dropped.

    Raises:
        VaecfError: a missing config file or a bad value, named in one line.
    """
    if config is None:
        config = DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None
    elif not config.is_file():
        raise VaecfError(f"--config: file not found: {config}")
    given = {
        section: {key: value for key, value in values.items() if value is not None}
        for section, values in flags.items()
    }

    class _FromFile(Settings):
        model_config = SettingsConfigDict(toml_file=config)

    _check_env_sections()
    try:
        return _FromFile(**{section: values for section, values in given.items() if values})
    except ValidationError as error:
        raise VaecfError(_describe(error, config)) from None
    except SettingsError as error:   # an environment value that is not of the field's type
        raise VaecfError(_describe_env(error)) from None
    except (OSError, ValueError) as error:  # unreadable or malformed TOML
        raise VaecfError(f"--config {config}: {error}") from None

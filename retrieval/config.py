"""Settings, resolved once per command: built-in defaults, then config.yaml, then command-line flags.

Relative paths in a config file are taken relative to that file's folder, so a config works the same
from whichever directory the command is run.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from retrieval.ann.kinds import OFFERED
from retrieval.errors import ConfigError
from retrieval.io.sources import open_regular
from retrieval.io.system import PRECISIONS

DEFAULT_CONFIG = Path("config.yaml")
# libyaml's safe loader where PyYAML was built with it (about 10x faster than the pure-Python one: every
# command reads config.yaml, and a cold query has no time to spare), the same safe loader otherwise.
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MODELS = ("resnet50", "vgg16")
METRICS = ("cosine", "l2")
ENGINES = ("openvino", "tensorflow")
POOLINGS = ("avg", "max", "gem")  # of the backbone's last feature map
EXECUTORS = ("local", "ray")  # where an ingest's embed step runs
INDEX_TYPES = OFFERED  # auto, and every kind a user may ask for (kinds/)
FAMILIES = ("clustered", "hard", "cone")  # synthetic feature families of `retrieval bench search`
# Pillow's own default: a 10000 x 10000 image is over it and so treated as a decompression bomb.
DEFAULT_MAX_PIXELS = 89_478_485


@dataclass(frozen=True)
class Settings:
    """Every knob of `retrieval`; config.yaml documents each one."""

    index: Path = Path("index")
    model: str = "resnet50"
    pooling: str = "avg"
    gem_p: float = 3.0
    weights: str = "imagenet"
    seed: int = 0
    batch_size: int = 32
    metric: str = "cosine"
    top_k: int = 5
    max_pixels: int = DEFAULT_MAX_PIXELS
    engine: str = "openvino"
    precision: str = "auto"
    int8_min_cosine: float = 0.999
    int8_max_lost: float = 0.01
    int8_min_held_out: int = 20
    calibration_images: int = 300
    decode_threads: int = 0  # 0: decode_threads_for() decides, by cores and precision
    checkpoint_every: int = 1000
    executor: str = "local"
    ray_address: str = ""  # "" starts a local Ray instance for the run
    index_type: str = "auto"
    recall_target: float = 0.95
    memory_budget_gb: float = 0.0
    pca_dim: int = 0
    hnsw_m: int = 32
    ef_search: int = 64
    ivf_lists: int = 0
    nprobe: int = 16
    pq_bytes: int = 0
    rerank: int = 4

    def __post_init__(self) -> None:
        choices = (
            ("model", MODELS),
            ("pooling", POOLINGS),
            ("executor", EXECUTORS),
            ("metric", METRICS),
            ("engine", ENGINES),
            ("precision", PRECISIONS),
            ("index_type", INDEX_TYPES),
        )
        for name, allowed in choices:
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {getattr(self, name)!r}")
        if not 1 <= self.gem_p <= 100:
            raise ConfigError(f"gem_p must be from 1 (average) to 100 (nearly max), not {self.gem_p}")
        if self.model == "vgg16" and self.pooling != "avg":
            raise ConfigError("vgg16's fc1 features have no pooling to choose: leave pooling at avg for vgg16")
        if not 0 < self.int8_min_cosine <= 1:
            raise ConfigError(f"int8_min_cosine must be in (0, 1], not {self.int8_min_cosine}")
        if not 0 <= self.int8_max_lost < 1:
            raise ConfigError(f"int8_max_lost is a fraction of the copies, in [0, 1), not {self.int8_max_lost}")
        if self.int8_min_held_out < 1:
            raise ConfigError(f"int8_min_held_out must be at least 1, not {self.int8_min_held_out}")
        if self.engine == "tensorflow" and self.precision == "int8":
            raise ConfigError("precision int8 runs on the openvino engine only; use engine: openvino")
        if not 0 < self.recall_target <= 1:
            raise ConfigError(f"recall_target must be in (0, 1], not {self.recall_target}")
        if self.memory_budget_gb < 0:
            raise ConfigError(f"memory_budget_gb must be 0 (no budget) or more, not {self.memory_budget_gb}")
        for name in ("pca_dim", "ivf_lists", "pq_bytes", "decode_threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be 0 or more, not {getattr(self, name)}")
        for name in (
            "batch_size",
            "top_k",
            "max_pixels",
            "checkpoint_every",
            "calibration_images",
            "hnsw_m",
            "ef_search",
            "nprobe",
            "rerank",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, not {getattr(self, name)}")


def decode_threads_for(settings: Settings, precision: str) -> int:
    """The decoding threads of an ingest whose model runs in `precision`: the setting when given; else a
    quarter of the cores (at least one) for a float model, which needs the rest (on 2 cores a second
    decoding thread was measured slower with bf16), and half of them (at least two) for int8, which
    needs less (on 2 cores: 70.7 img/s with one, 81.9 with two, benchmarks/results/ingest-int8.md)."""
    if settings.decode_threads:
        return settings.decode_threads
    cores = os.cpu_count() or 1
    return max(2, cores // 2) if precision == "int8" else max(1, cores // 4)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_PATH_KEYS = ("index",)


def load_settings(config: Path | None = None, **overrides: Any) -> Settings:
    """Resolve settings: defaults, then `config` (or ./config.yaml when present), then non-None overrides.

    `weights` given as a relative file path in the config file is resolved against the file's folder;
    the keywords `imagenet` and `none` are left as they are.
    """
    values: dict[str, Any] = {}
    if config is None and DEFAULT_CONFIG.is_file():
        config = DEFAULT_CONFIG
    if config is not None:
        values.update(_read_config(config))
    values.update({k: v for k, v in overrides.items() if v is not None})
    unknown = sorted(set(values) - set(_FIELDS))
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(_FIELDS)}")
    return Settings(**{k: _coerce(k, v) for k, v in values.items()})


def _read_config(path: Path) -> dict[str, Any]:
    try:
        with open_regular(path) as f:
            raw = yaml.load(f.read().decode("utf-8"), Loader=SAFE_LOADER)
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text: {e}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must be a mapping of key: value lines")
    base = path.parent
    for key in _PATH_KEYS:
        if isinstance(raw.get(key), str):
            raw[key] = base / raw[key]
    weights = raw.get("weights")
    if isinstance(weights, str) and weights not in ("imagenet", "none"):
        raw["weights"] = str(base / weights)
    if weights is None and "weights" in raw:
        raw["weights"] = "none"  # YAML reads a bare `none`/`null`/`~` as None
    return raw


def _coerce(key: str, value: Any) -> Any:
    """Check a value against the field's type; YAML and flags give str/int/bool, so this stays small."""
    kind = _FIELDS[key].type
    if kind == "Path":
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{key} must be a path, not {value!r}")
        return Path(value)
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, not {value!r}")
        return float(value)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be a whole number, not {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, not {value!r}")
    return value

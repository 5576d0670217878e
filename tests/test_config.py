"""Settings resolve once: defaults, then the config file, then flags; bad keys and values are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrieval.config import Settings, load_settings
from retrieval.errors import ConfigError


def test_the_shipped_config_yaml_states_the_built_in_defaults():
    """Running without a config file and running with the shipped one must behave alike: a default
    changed in code but not in config.yaml (or the reverse) fails here."""
    shipped = Path(__file__).parents[1] / "config.yaml"
    from_file, defaults = load_settings(shipped), Settings()
    for key in Settings.__dataclass_fields__:
        expected = shipped.parent / defaults.index if key == "index" else getattr(defaults, key)
        assert getattr(from_file, key) == expected, key


def test_config_file_then_flags(tmp_path):
    config = tmp_path / "conf" / "config.yaml"
    config.parent.mkdir()
    config.write_text("model: vgg16\nbatch_size: 8\nindex: idx\nweights: w/resnet.h5\n")
    settings = load_settings(config, batch_size=4, metric=None)
    assert settings.model == "vgg16"  # from the file
    assert settings.batch_size == 4  # the flag wins
    assert settings.metric == "cosine"  # a flag left unset does not override
    assert settings.index == config.parent / "idx"  # relative to the config file
    assert settings.weights == str(config.parent / "w/resnet.h5")


def test_dot_config_yaml_is_picked_up_from_the_working_directory(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text("top_k: 9\n")
    monkeypatch.chdir(tmp_path)
    assert load_settings().top_k == 9


def test_the_shipped_config_yaml_is_valid_and_documents_every_key():
    shipped = Path(__file__).parents[1] / "config.yaml"
    settings = load_settings(shipped)
    assert settings.model == "resnet50" and settings.weights == "imagenet"
    text = shipped.read_text()
    for key in Settings.__dataclass_fields__:
        assert f"\n{key}:" in text or f"\n# {key}:" in text, f"config.yaml lacks {key}"


@pytest.mark.parametrize(
    "content, message",
    [
        ("colour: blue\n", "unknown setting"),
        ("batch_size: lots\n", "whole number"),
        ("batch_size: 0\n", "at least 1"),
        ("model: alexnet\n", "model must be one of"),
        ("metric: manhattan\n", "metric must be one of"),
        ("- a\n- list\n", "mapping"),
        ("model: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_config_is_a_config_error(tmp_path, content, message):
    config = tmp_path / "config.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_weights_none_keyword_is_kept(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("weights: none\n")
    assert load_settings(config).weights == "none"


def test_decode_threads_follow_the_setting_else_the_cores_and_the_precision(monkeypatch):
    from retrieval.config import decode_threads_for

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert decode_threads_for(Settings(), "bf16") == 1 and decode_threads_for(Settings(), "int8") == 2
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert decode_threads_for(Settings(), "fp32") == 4 and decode_threads_for(Settings(), "int8") == 8
    assert decode_threads_for(Settings(decode_threads=3), "int8") == 3

from pathlib import Path

import pytest

from qcli.config import PreprocessConfig, load_recipe
from qcli.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_recipes_load():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        recipe = load_recipe(path)
        assert recipe.path == path


def test_flags_win_over_file_and_file_over_default(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text("[calibrate]\nlimit = 10\nbatch-size = 8\n")
    recipe = load_recipe(path)
    assert recipe.option("calibrate", "limit", None, None) == 10
    assert recipe.option("calibrate", "limit", 3, None) == 3
    assert recipe.option("calibrate", "batch_size", None, 32) == 8
    assert recipe.option("calibrate", "seed", None, None) is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[calibrate]\nlimt = 3\n", "unknown key 'calibrate.limt'"),
        ("[calibrate]\nlimit = 'many'\n", "'calibrate.limit' has the wrong type"),
        ("[preprocess]\nchannels = 'cmyk'\n", "preprocess.channels must be one of"),
        ("[preprocess]\nstd = [0.0]\n", "std values must be positive"),
        ("[preprocess]\nsize = 3\n", "unknown key 'preprocess.size'"),
        ("[whatever]\n", "unknown section '[whatever]'"),
        ("[calibrate\nlimit = 1", "is not valid TOML"),
    ],
)
def test_bad_recipes_name_the_key_and_file(tmp_path, text, needle):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_recipe(path)
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_preprocess_checks_itself():
    with pytest.raises(ConfigError):
        PreprocessConfig(resize=0)
    with pytest.raises(ConfigError):
        PreprocessConfig(mean=(0.1, 0.2), std=(0.1, 0.2, 0.3))

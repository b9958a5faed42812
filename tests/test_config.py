from pathlib import Path

import pytest

from qcli.cli.app import recipe_defaults_for
from qcli.config import PreprocessConfig, load_recipe
from qcli.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_shipped_recipes_load():
    for path in sorted((ROOT / "configs").glob("*.toml")):
        recipe = load_recipe(path)
        assert recipe.path == path


def test_flags_win_over_file_and_file_over_default(tmp_path):
    """One precedence rule, Click's default_map: a flag beats the recipe, the recipe the default."""
    import typer

    from qcli.cli.app import app

    path = tmp_path / "r.toml"
    path.write_text("[calibrate]\nlimit = 10\nbatch-size = 8\n")
    assert recipe_defaults_for("calibrate", load_recipe(path)) == {"limit": 10, "batch_size": 8}
    command = typer.main.get_command(app).commands["calibrate"]
    argv = [str(path), str(tmp_path), "-o", "s.safetensors", "--config", str(path), "--limit", "3"]
    with command.make_context("calibrate", argv) as ctx:
        assert ctx.params["limit"] == 3  # the flag
        assert ctx.params["batch_size"] == 8  # the recipe
        assert ctx.params["seed"] is None and ctx.params["mode"].value == "static"  # the declared defaults
        assert ctx.get_parameter_source("batch_size").name == "DEFAULT_MAP"


def test_recipe_keys_are_the_commands_own_options(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('[convert]\nmax_trials = 5\nexclude = ["fc"]\npackage_batch_sizes = [1, 8]\nmethod = "mse"\n')
    values = recipe_defaults_for("convert", load_recipe(path))
    assert values == {"max_trials": 5, "exclude": ["fc"], "package_batch_sizes": "1,8", "method": "mse"}
    path.write_text("[convert]\nmethd = 'mse'\n")
    with pytest.raises(ConfigError, match="did you mean 'method'"):
        recipe_defaults_for("convert", load_recipe(path))
    path.write_text("[convert]\nmethod = 'magic'\n")
    with pytest.raises(ConfigError, match="'convert.method': .*magic"):
        recipe_defaults_for("convert", load_recipe(path))
    path.write_text("[convert]\nexclude = [1]\n")
    with pytest.raises(ConfigError, match="expected list of a string, got an integer 1"):
        recipe_defaults_for("convert", load_recipe(path))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[calibrate]\nlimt = 3\n", "unknown key 'calibrate.limt'; did you mean 'limit'?"),
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
        for command in ("calibrate", "convert", "bench"):
            recipe_defaults_for(command, load_recipe(path))
    assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_preprocess_checks_itself():
    with pytest.raises(ConfigError):
        PreprocessConfig(resize=0)
    with pytest.raises(ConfigError):
        PreprocessConfig(mean=(0.1, 0.2), std=(0.1, 0.2, 0.3))


def test_recipes_forgive_the_obvious(tmp_path):
    """channels = 1 or 3, an interpolation for resize, and a near-miss key suggests the right one."""
    import numpy as np
    from PIL import Image

    from qcli.data import InputSpec, SampleFolder

    path = tmp_path / "r.toml"
    path.write_text(
        '[preprocess]\nchannels = 3\nresize = 20\ninterpolation = "bicubic"\n[bench]\noutput_name = "2"\nmetric = "auc"\n'
    )
    recipe = load_recipe(path)
    assert recipe.preprocess.channels == "rgb" and recipe.preprocess.interpolation == "bicubic"
    assert PreprocessConfig(channels=1).channels == "grayscale"
    # bicubic and nearest resample differently from the default bilinear
    (tmp_path / "img").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 41, 3), dtype=np.uint8)).save(tmp_path / "img" / "a.png")
    spec = InputSpec(("x",), (4,), 3)
    pixels = {
        how: next(SampleFolder.open(tmp_path / "img", PreprocessConfig(resize=20, interpolation=how)).samples(spec))[1][
            "x"
        ]
        for how in ("bilinear", "bicubic", "nearest")
    }
    assert pixels["bilinear"].shape == (3, 20, 22)
    assert not pixels["bilinear"].equal(pixels["bicubic"]) and not pixels["bilinear"].equal(pixels["nearest"])
    with pytest.raises(ConfigError, match="interpolation must be one of bilinear, bicubic, nearest, not 'lanczos'"):
        PreprocessConfig(interpolation="lanczos")
    with pytest.raises(ConfigError, match="channels must be one of auto, grayscale, rgb \\(or 1, 3\\), not 2"):
        PreprocessConfig(channels=2)  # type: ignore[arg-type]
    assert recipe_defaults_for("bench", recipe) == {"output_name": "2", "metric": "auc"}  # recipes carry them
    path.write_text("[preprocess]\ncentre_crop = 224\n")
    with pytest.raises(ConfigError, match="did you mean 'center_crop'"):
        load_recipe(path)

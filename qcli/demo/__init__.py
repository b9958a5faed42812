"""The bundled demo: a small residual CNN trained by the project on real MNIST digits.

``qcli/demo/train.py`` trains it and writes the files that ship here:

- ``weights/digits.safetensors``: the state dict (load with ``--arch qcli.demo.model:DigitNet``);
- ``weights/digits.torchscript.pt``: the same weights as a traced TorchScript archive;
- ``data/calib/``: 256 training digits as PNGs (the calibration folder);
- ``data/eval/<digit>/``: 1000 held-out digits as PNGs, one sub-folder per class.
"""

from pathlib import Path

DEMO_DIR = Path(__file__).resolve().parent
WEIGHTS = DEMO_DIR / "weights" / "digits.safetensors"
TORCHSCRIPT = DEMO_DIR / "weights" / "digits.torchscript.pt"
CALIB_DIR = DEMO_DIR / "data" / "calib"
EVAL_DIR = DEMO_DIR / "data" / "eval"
ARCH = "qcli.demo.model:DigitNet"

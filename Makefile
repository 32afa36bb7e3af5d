# Two commands for a new user: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip

.PHONY: demo test install install-dev bench bench-peer clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[cam,export,serve]'
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e '.[dev]'
	touch $(VENV)/.installed $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: $(VENV)/.installed
	$(VENV)/bin/chexnet demo

# pytest exits 5 when it collects no test: say so instead of failing obscurely.
test: $(VENV)/.installed-dev
	@$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)"; exit 0; fi; exit $$rc

# CPU benchmarks (minutes): loader, inference (torch vs onnxruntime), the server under load (with and without
# batching), 1 vs 2 processes and the scaling model, Grad-CAM localization of a small trained model.
# Tables on stdout, JSON and the scaling chart in $(BENCH_OUT); record numbers in benchmarks/RESULTS.md.
BENCH_OUT ?= bench-out
bench: $(VENV)/.installed-dev
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_loader.py --images 2000 --json $(BENCH_OUT)/loader.json
	$(PY) benchmarks/bench_predict.py --json $(BENCH_OUT)/predict.json
	$(PY) benchmarks/bench_serve.py --json $(BENCH_OUT)/serve.json
	$(PY) benchmarks/bench_scaling.py --steps 5 --json $(BENCH_OUT)/scaling.json
	$(PY) benchmarks/scaling_model.py --measured $(BENCH_OUT)/scaling.json --strategies benchmarks/strategies.json \
		--json $(BENCH_OUT)/scaling_model.json --png $(BENCH_OUT)/scaling.png
	$(PY) benchmarks/bench_localize.py --json $(BENCH_OUT)/localize.json

# chexnet vs the Keras + Horovod report's model, alternating in one run; TensorFlow lives in its own venv
KERAS_VENV ?= .venv-keras
$(KERAS_VENV)/.installed:
	$(PYTHON) -m venv $(KERAS_VENV)
	$(KERAS_VENV)/bin/python -m pip install -q tensorflow-cpu
	touch $@
bench-peer: $(VENV)/.installed-dev $(KERAS_VENV)/.installed
	mkdir -p $(BENCH_OUT)
	$(PY) benchmarks/bench_peer.py --keras-python $(KERAS_VENV)/bin/python --rounds 3 --precisions fp32,bf16 --variants base,per_core --json $(BENCH_OUT)/peer.json

clean:
	rm -rf $(VENV) $(KERAS_VENV) $(BENCH_OUT) demo build *.egg-info src/*.egg-info .pytest_cache

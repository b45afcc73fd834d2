# vaecf: `make demo` and `make test` work on a fresh machine (they install first).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DIST   := $(VENV)/.horovod-stamp
# Horovod 0.28.1 builds from source against the installed TensorFlow (<= 2.18), CPU via Gloo.
HOROVOD_ENV := HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1 \
               HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1
DEMO   := demo

.PHONY: install install-dist test demo bench lint clean

# Everything but Horovod: enough for prepare, train, test, recommend, export and bench.
install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade "pip>=24"
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[cpu,dev,dask]"
	touch $@

# Horovod, built from source against the installed TensorFlow (minutes): for --np / --gpus and
# the distributed tests.
install-dist: $(DIST)

$(DIST): $(STAMP)
	$(HOROVOD_ENV) $(BIN)/python -m pip install -q --no-build-isolation --no-cache-dir \
		-c constraints.txt "horovod==0.28.1"
	$(BIN)/python -c "import horovod.tensorflow as hvd; assert hvd.gloo_built()"
	touch $@

test: install-dist
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

demo: install
	rm -rf $(DEMO)
	$(BIN)/vaecf prepare --example movielens-small --out $(DEMO)/data
	$(BIN)/vaecf train --data $(DEMO)/data --out $(DEMO)/run --epochs 30 --batch-size 50
	$(BIN)/vaecf test --run $(DEMO)/run
	$(BIN)/vaecf recommend --run $(DEMO)/run --user-items 1,50,260,1196,1210 \
		--item-names vaecf/examples/movielens-small/movies.csv --name-col title

bench: install
	$(BIN)/vaecf bench prepare
	$(BIN)/vaecf bench train --synthetic 4000 --batch-size 500,2000
	$(BIN)/vaecf bench train --synthetic 4000 --batch-size 500,2000 --amp
	$(BIN)/vaecf bench inference --synthetic

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .ruff_cache

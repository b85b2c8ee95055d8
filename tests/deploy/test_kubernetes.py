"""The Kubernetes manifests (config/kubernetes) and the container image (config/container).

Every overlay is rendered with `kubectl kustomize`, every object validated offline against
the Kubernetes schemas (kubernetes-validate) or the CRD schemas in crd-schemas/ (jsonschema),
the whole scanned with checkov, and what an operator relies on is asserted in the rendered
output: probes, drain, PDB, security context, GPUs, tensor parallel, secrets, TLS, alerts.
Nothing here talks to a cluster: rendered and validated, never run.

The scanners live in their own venv (`make .venv-k8s/.installed`; `make test` builds it),
because their pinned dependencies clash with vLLM's. Missing tools fail, they never skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from deepseekd.config import load_settings
from deepseekd.security.keyring import KeyringError

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "config" / "kubernetes"
OVERLAYS = ("cpu-demo", "rtx4090", "a100", "a100x8")
TOOLS = ROOT / ".venv-k8s" / "bin"
KUBE_VERSION = "1.32.0"
# GPUs per replica and the profile each overlay runs.
GPUS = {"cpu-demo": 0, "rtx4090": 1, "a100": 1, "a100x8": 8}
PROFILE = {"cpu-demo": "cpu-small", "rtx4090": "rtx4090", "a100": "a100", "a100x8": "a100x8"}
# checkov checks skipped on purpose; each carries its reason in a checkov.io/skip annotation.
SKIPPED = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}

Docs = list[dict[str, Any]]


def _kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl is not installed: the Kubernetes manifests cannot be rendered. Install "
            "kubectl >= 1.32 (it carries kustomize) and run the tests again"
        )
    return found


def _tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(
            f"{path} is missing: run `make .venv-k8s/.installed` (checkov and "
            "kubernetes-validate in their own venv; `make test` builds it first)"
        )
    return path


def _render(kubectl: str, target: Path, *extra: str) -> str:
    out = subprocess.run(
        [kubectl, "kustomize", *extra, str(target)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, f"kubectl kustomize {target} failed:\n{out.stderr}"
    return out.stdout


@pytest.fixture(scope="module")
def rendered_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each overlay rendered once, plus the base with the HPA component instead of KEDA."""
    kubectl = _kubectl()
    out = tmp_path_factory.mktemp("rendered")
    for overlay in OVERLAYS:
        (out / f"{overlay}.yaml").write_text(_render(kubectl, K8S / "overlays" / overlay))
    hpa = tmp_path_factory.mktemp("hpa-variant")
    (hpa / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": "deepseekd",
                "resources": [os.path.relpath(K8S / "overlays" / "cpu-demo", hpa)],
                "components": [os.path.relpath(K8S / "components" / "hpa", hpa)],
            }
        )
    )
    text = _render(kubectl, hpa, "--load-restrictor", "LoadRestrictionsNone")
    (out / "hpa-variant.yaml").write_text(text)
    return out


@pytest.fixture(scope="module")
def rendered(rendered_dir: Path) -> dict[str, Docs]:
    return {
        p.stem: [d for d in yaml.safe_load_all(p.read_text()) if d]
        for p in sorted(rendered_dir.glob("*.yaml"))
    }


def one(docs: Docs, kind: str, name: str = "deepseekd") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"].startswith(name)]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def pod_spec(docs: Docs) -> dict[str, Any]:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def container(docs: Docs) -> dict[str, Any]:
    (c,) = pod_spec(docs)["containers"]
    return c


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(docs: Docs) -> dict[str, dict[str, Any]]:
    """mountPath -> the mount, with the volume it mounts under "volume"."""
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    return {
        m["mountPath"]: {**m, "volume": volumes[m["name"]]} for m in container(docs)["volumeMounts"]
    }


def config_toml(docs: Docs) -> dict[str, Any]:
    return tomllib.loads(one(docs, "ConfigMap", "deepseekd-config")["data"]["deepseekd.toml"])


# --------------------------------------------------------------------------- render, validate


def test_every_overlay_renders_the_objects_a_deployment_needs(rendered: dict[str, Docs]) -> None:
    common = {
        "Namespace", "ServiceAccount", "ConfigMap", "PersistentVolumeClaim", "Deployment",
        "Service", "PodDisruptionBudget", "NetworkPolicy", "Certificate", "ServiceMonitor",
        "PrometheusRule",
    }  # fmt: skip
    for overlay in OVERLAYS:
        kinds = {d["kind"] for d in rendered[overlay]}
        autoscaler = {"ScaledObject"} if GPUS[overlay] else set()
        assert kinds == common | autoscaler, overlay
        assert {
            d["metadata"].get("namespace") for d in rendered[overlay] if d["kind"] != "Namespace"
        } == {"deepseekd"}
    assert "HorizontalPodAutoscaler" in {d["kind"] for d in rendered["hpa-variant"]}


def test_every_object_validates_against_its_schema_offline(rendered_dir: Path) -> None:
    files = [str(p) for p in sorted(rendered_dir.glob("*.yaml"))]
    files += [str(p) for p in sorted((K8S / "examples").glob("*-job.yaml"))]
    script = Path(__file__).with_name("k8s_validate.py")
    out = subprocess.run(
        [str(_tool("python")), str(script), KUBE_VERSION, *files],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["errors"] == []
    kinds = {kind for _, kind, _ in result["checked"]}
    assert {"Deployment", "ScaledObject", "Certificate", "PrometheusRule", "Job"} <= kinds


def test_checkov_passes_with_only_the_justified_skips(rendered_dir: Path) -> None:
    env = {**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}
    out = subprocess.run(
        [str(_tool("checkov")), "-d", str(rendered_dir), "--framework", "kubernetes",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=300, env=env,
    )  # fmt: skip
    report = json.loads(out.stdout)
    results = report["results"]
    failed = [(c["check_id"], c["resource"], c["file_path"]) for c in results["failed_checks"]]
    assert failed == [] and out.returncode == 0, failed
    assert results["parsing_errors"] == []
    assert report["summary"]["passed"] > 80 * len(OVERLAYS)
    assert {c["check_id"] for c in results["skipped_checks"]} == SKIPPED
    # Every skip names its reason in the Deployment's annotations (checkov.io/skipN: ID=why).
    annotations = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())["metadata"][
        "annotations"
    ]
    reasons = dict(
        v.split("=", 1) for k, v in annotations.items() if k.startswith("checkov.io/skip")
    )
    assert set(reasons) == SKIPPED and all(len(why) > 40 for why in reasons.values())


# --------------------------------------------------------------------------- the pod


def test_probes_use_the_daemons_health_routes_with_a_model_load_budget(
    rendered: dict[str, Docs],
) -> None:
    for overlay in OVERLAYS:
        c = container(rendered[overlay])
        routes = {
            p: c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
        }
        assert routes == {
            "startupProbe": "/readyz",
            "readinessProbe": "/readyz",
            "livenessProbe": "/healthz",
        }
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert (
                c[probe]["httpGet"]["scheme"] == "HTTPS" and c[probe]["httpGet"]["port"] == "https"
            )
        start = c["startupProbe"]
        budget = start["periodSeconds"] * start["failureThreshold"]
        # The systemd unit allows 15 minutes to load; a whole-node 70B model gets 30.
        assert budget >= (1800 if overlay == "a100x8" else 900), overlay
        # The kubelet presents no client certificate: the handshake must not demand one.
        assert config_toml(rendered[overlay])["server"]["tls"]["require_client_cert"] is False


def test_termination_grace_covers_prestop_drain_and_engine_shutdown(
    rendered: dict[str, Docs],
) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        c = container(docs)
        pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep"
        drain = config_toml(docs)["server"]["drain_timeout_s"]
        grace = pod_spec(docs)["terminationGracePeriodSeconds"]
        assert grace >= int(pre_stop[1]) + drain + 30, (overlay, grace)


def test_pdb_covers_the_server_pods_and_lets_one_go_at_a_time(rendered: dict[str, Docs]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        pdb = one(docs, "PodDisruptionBudget")["spec"]
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert pdb["selector"]["matchLabels"].items() <= labels.items()
        assert pdb["maxUnavailable"] == 1
        service = one(docs, "Service")["spec"]
        assert service["selector"].items() <= labels.items()


def test_pod_security_is_restricted(rendered: dict[str, Docs]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        spec = pod_spec(docs)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] >= 10000
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert spec["automountServiceAccountToken"] is False
        # Else the Service "deepseekd" injects DEEPSEEKD_SERVICE_HOST etc., which the daemon
        # refuses as unknown settings.
        assert spec["enableServiceLinks"] is False
        sc = container(docs)["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        assert all("hostPath" not in v for v in spec["volumes"])
        ns = one(docs, "Namespace")["metadata"]["labels"]
        assert ns["pod-security.kubernetes.io/enforce"] == "restricted"


def test_writable_paths_are_volumes_and_match_the_daemons_settings(
    rendered: dict[str, Docs], tmp_path: Path
) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        c, m = container(docs), mounts(docs)
        env = env_of(c)
        settings = _settings(docs, env, tmp_path / overlay)
        data = str(settings.data_dir)
        assert "emptyDir" in m[data]["volume"] and not m[data].get("readOnly")
        assert "emptyDir" in m["/tmp"]["volume"]
        keys = m[str(settings.keys_dir)]
        assert keys["readOnly"] and keys["volume"]["secret"]["secretName"] == "deepseekd-master-key"
        models = m[str(settings.models_dir)]
        assert (
            models["readOnly"]
            and models["volume"]["persistentVolumeClaim"]["claimName"] == "deepseekd-models"
        )
        cache = m[str(settings.cache_dir)]
        assert not cache.get("readOnly") and cache["volume"]["persistentVolumeClaim"]
        for var in ("HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR"):
            assert env[var].startswith(data), var
        # Rotation must stay possible: keys come from data_dir/keys, not a systemd-style
        # credentials directory (with it set the daemon refuses to rotate).
        assert "CREDENTIALS_DIRECTORY" not in env
        assert env["DEEPSEEKD_STORE__URL"] == {
            "secretKeyRef": {"name": "deepseekd-store", "key": "url"}
        }
        assert c["imagePullPolicy"] == "IfNotPresent"
        assert c["image"].startswith("registry.hospital.internal/") and not c["image"].endswith(
            ":latest"
        )


def _settings(docs: Docs, env: dict[str, Any], scratch: Path) -> Any:
    """The daemon's own settings loader on the rendered ConfigMap and container env, as the
    pod would load them (TLS files, which it checks for, stand in under ``scratch``)."""
    tls_dir = mounts(docs)["/etc/deepseekd/tls"]
    assert tls_dir["volume"]["secret"]["secretName"] == "deepseekd-tls"
    scratch.mkdir(parents=True)
    for name in ("tls.crt", "tls.key", "ca.crt"):
        (scratch / name).write_text("stand-in\n")
    text = one(docs, "ConfigMap", "deepseekd-config")["data"]["deepseekd.toml"]
    assert text.count("/etc/deepseekd/tls/") == 3
    path = scratch / "deepseekd.toml"
    path.write_text(text.replace("/etc/deepseekd/tls/", f"{scratch}/"))
    config_mount = mounts(docs)["/etc/deepseekd/config"]
    assert env["DEEPSEEKD_CONFIG"] == "/etc/deepseekd/config/deepseekd.toml"
    assert (
        config_mount["volume"]["configMap"]["name"]
        == one(docs, "ConfigMap", "deepseekd-config")["metadata"]["name"]
    )
    plain = {k: v for k, v in env.items() if isinstance(v, str) and k != "DEEPSEEKD_CONFIG"}
    plain["DEEPSEEKD_STORE__URL"] = "postgresql+asyncpg://deepseekd:secret@db:5432/deepseekd"
    return load_settings(path, env=plain)


def test_gpus_profiles_and_tensor_parallel_per_overlay(
    rendered: dict[str, Docs], tmp_path: Path
) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        c = container(docs)
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert requests.get("nvidia.com/gpu", 0) == limits.get("nvidia.com/gpu", 0) == GPUS[overlay]
        assert {"cpu", "memory"} <= requests.keys() and {"cpu", "memory"} <= limits.keys()
        settings = _settings(docs, env_of(c), tmp_path / overlay)
        assert settings.engine.profile == PROFILE[overlay]
        shm = mounts(docs).get("/dev/shm")
        if overlay == "a100x8":
            assert settings.engine.tensor_parallel_size == GPUS[overlay] == 8
            assert shm is not None and shm["volume"]["emptyDir"]["medium"] == "Memory"
            assert shm["volume"]["emptyDir"]["sizeLimit"]
        else:
            assert settings.engine.tensor_parallel_size <= 1 and shm is None
            assert "DEEPSEEKD_ENGINE__TENSOR_PARALLEL_SIZE" not in env_of(c)


# --------------------------------------------------------------------------- around the pod


def test_autoscaling_follows_queue_depth_and_kv_cache_at_a_slow_pace(
    rendered: dict[str, Docs],
) -> None:
    metrics = {"deepseekd_requests_waiting", "deepseekd_kv_cache_usage_ratio"}
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        scaled = [d for d in docs if d["kind"] in ("ScaledObject", "HorizontalPodAutoscaler")]
        if not GPUS[overlay]:
            assert scaled == []
            continue
        spec = one(docs, "ScaledObject")["spec"]
        assert spec["scaleTargetRef"]["name"] == one(docs, "Deployment")["metadata"]["name"]
        queries = [t["metadata"]["query"] for t in spec["triggers"]]
        assert {m for m in metrics for q in queries if m in q} == metrics
        behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
        _assert_slow(behavior)
        assert (
            1 <= spec["minReplicaCount"] <= spec["fallback"]["replicas"] <= spec["maxReplicaCount"]
        )
    hpa = one(rendered["hpa-variant"], "HorizontalPodAutoscaler")["spec"]
    assert {m["pods"]["metric"]["name"] for m in hpa["metrics"]} == metrics
    _assert_slow(hpa["behavior"])


def _assert_slow(behavior: dict[str, Any]) -> None:
    """A replica takes minutes to load: add one at a time, remove after a long quiet spell."""
    assert behavior["scaleUp"]["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 300}]
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 1200
    assert all(p["value"] == 1 for p in behavior["scaleDown"]["policies"])


def test_certificate_rotates_every_72_hours_into_the_tls_mount(rendered: dict[str, Docs]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        cert = one(docs, "Certificate", "deepseekd-tls")["spec"]
        assert cert["duration"] == "72h" and cert["renewBefore"] == "24h"
        tls = mounts(docs)["/etc/deepseekd/tls"]
        assert tls["volume"]["secret"]["secretName"] == cert["secretName"]
        # kubelet never updates a subPath mount: the renewed files would never arrive.
        assert "subPath" not in tls
        server_tls = config_toml(docs)["server"]["tls"]
        assert {server_tls[k] for k in ("cert", "key", "client_ca")} == {
            "/etc/deepseekd/tls/tls.crt", "/etc/deepseekd/tls/tls.key", "/etc/deepseekd/tls/ca.crt"
        }  # fmt: skip
        assert "deepseekd.deepseekd.svc" in cert["dnsNames"]


def test_network_policy_limits_who_talks_to_whom(rendered: dict[str, Docs]) -> None:
    for overlay in OVERLAYS:
        docs = rendered[overlay]
        spec = one(docs, "NetworkPolicy")["spec"]
        assert spec["policyTypes"] == ["Ingress", "Egress"]
        labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
        (ingress,) = spec["ingress"]
        sources = {
            p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            for p in ingress["from"]
        }
        assert sources == {"ingress-nginx", "monitoring"}
        assert [p["port"] for p in ingress["ports"]] == [8443]
        ports = {p["port"] for rule in spec["egress"] for p in rule["ports"]}
        assert ports == {53, 5432, 636, 389, 6514, 443}


def test_prometheus_scrapes_each_replica_as_job_deepseekd(rendered: dict[str, Docs]) -> None:
    docs = rendered["a100"]
    monitor = one(docs, "ServiceMonitor")["spec"]
    service = one(docs, "Service")
    # The job label is the Service's name; the EngineDown rule reads up{job="deepseekd"}.
    assert service["metadata"]["name"] == "deepseekd"
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["scheme"] == "https" and endpoint["authorization"]["type"] == "Bearer"


def test_prometheus_rule_holds_the_same_alerts_as_alert_rules_yml(
    rendered: dict[str, Docs],
) -> None:
    expected = yaml.safe_load((ROOT / "config" / "prometheus" / "alert_rules.yml").read_text())
    for overlay in OVERLAYS:
        rule = one(rendered[overlay], "PrometheusRule")["spec"]
        assert rule["groups"] == expected["groups"], (
            "config/kubernetes/base/prometheusrule.yaml differs from config/prometheus/"
            "alert_rules.yml: run .venv/bin/python tests/deploy/test_kubernetes.py "
            "--write-prometheusrule"
        )


# --------------------------------------------------------------------------- the image


def test_containerfile_installs_like_make_install_and_runs_unprivileged() -> None:
    text = (ROOT / "config" / "container" / "Containerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^RUN make install EXTRA=\$\{EXTRA\}", code, re.M)
    assert re.search(r"^install: \$\(INSTALLED\)$", (ROOT / "Makefile").read_text(), re.M)
    users = re.findall(r"^USER\s+(\S+)", code, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^ARG BASE_IMAGE=\S*nvidia/cuda:13", code, re.M)
    assert "python:3.11-slim" in text and "--build-arg EXTRA=cpu" in text
    for fetch in (
        "curl",
        "wget",
        "huggingface-cli",
        "hf download",
        "snapshot_download",
        "git clone",
    ):
        assert fetch not in code, fetch
    assert re.search(r'^ENTRYPOINT \["deepseekd"\]', code, re.M)
    # Beside the Containerfile (the top level is fixed): BuildKit reads
    # <Containerfile>.dockerignore itself, podman is given it with --ignorefile.
    ignored = (ROOT / "config" / "container" / "Containerfile.dockerignore").read_text().split()
    assert "--ignorefile config/container/Containerfile.dockerignore" in text
    assert {".venv", ".venv-*", "data", ".git"} <= set(ignored)


# ------------------------------------------------------------------ kubelet's Secret volumes


def _kubelet_write(volume: Path, files: dict[str, bytes], stamp: str, mode: int) -> None:
    """What kubelet's atomic writer does to a Secret volume on every update: the files go
    into a new hidden folder, the ``..data`` symlink is swapped to it with one rename, and
    each visible name is a symlink through ``..data``; the previous folder is removed."""
    volume.mkdir(exist_ok=True)
    old = (volume / "..data").resolve() if (volume / "..data").exists() else None
    folder = volume / f"..{stamp}"
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
        (folder / name).chmod(mode)
    (volume / "..data_tmp").symlink_to(folder.name)
    os.rename(volume / "..data_tmp", volume / "..data")
    for name in files:
        if not (volume / name).is_symlink():
            (volume / name).symlink_to(f"..data/{name}")
    for stale in volume.iterdir():
        if stale.is_symlink() and not stale.exists():
            stale.unlink()  # a name the Secret no longer holds
    if old is not None:
        shutil.rmtree(old)


def _certificate(cn: str, days: int) -> tuple[bytes, bytes]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def test_tls_reload_sees_a_renewal_written_the_way_kubelet_writes_it(tmp_path: Path) -> None:
    from deepseekd.config import TlsSettings
    from deepseekd.security.tls import TlsReloader

    volume = tmp_path / "tls"
    cert, key = _certificate("deepseekd.deepseekd.svc", days=3)
    _kubelet_write(volume, {"tls.crt": cert, "tls.key": key, "ca.crt": cert}, "2026_12_01", 0o440)
    cfg = TlsSettings(
        cert=str(volume / "tls.crt"), key=str(volume / "tls.key"), client_ca=str(volume / "ca.crt")
    )
    reloader = TlsReloader(cfg)
    first = reloader.current.not_after
    assert reloader.poll() is None  # nothing changed
    cert, key = _certificate("deepseekd.deepseekd.svc", days=5)
    _kubelet_write(volume, {"tls.crt": cert, "tls.key": key, "ca.crt": cert}, "2026_12_03", 0o440)
    renewed = reloader.poll()
    assert renewed is not None and renewed.not_after > first + 86400


def test_keyring_picks_up_a_key_version_added_to_the_secret(tmp_path: Path) -> None:
    from deepseekd.security.keyring import Keyring

    keys = tmp_path / "keys"
    v1 = {"master-v1.key": b"A" * 43 + b"=\n"}
    _kubelet_write(keys, v1, "2026_12_01", 0o400)
    keyring = Keyring([keys])
    assert keyring.versions == [1]
    _kubelet_write(keys, {**v1, "master-v2.key": b"B" * 43 + b"=\n"}, "2026_12_02", 0o400)
    keyring.reload()
    assert keyring.versions == [1, 2] and keyring.current_version == 2
    _kubelet_write(keys, {"master-v2.key": b"B" * 43 + b"=\n"}, "2026_12_03", 0o400)
    keyring.reload()
    assert keyring.versions == [2]


def test_keyring_reads_a_secret_volume_made_group_readable_by_fsgroup(tmp_path: Path) -> None:
    """kubelet makes a Secret 0440 root:fsGroup for a non-root pod: readable, as the group
    is the process's own; a foreign group or a world-readable file is still refused."""
    from deepseekd.security.keyring import Keyring

    keys = tmp_path / "keys"
    _kubelet_write(keys, {"master-v1.key": b"A" * 43 + b"=\n"}, "2026_12_01", 0o440)
    os.chown(keys / "..data" / "master-v1.key", -1, os.getegid())
    assert Keyring([keys]).versions == [1]
    foreign = max({os.getegid(), *os.getgroups()}) + 4242
    os.chown(keys / "..data" / "master-v1.key", -1, foreign)
    with pytest.raises(KeyringError, match="readable by others"):
        Keyring([keys])
    os.chown(keys / "..data" / "master-v1.key", -1, os.getegid())
    os.chmod(keys / "..data" / "master-v1.key", 0o444)
    with pytest.raises(KeyringError, match="readable by others"):
        Keyring([keys])


# --------------------------------------------------------------------------- helpers


def _prometheus_rule_text() -> str:
    rules = yaml.safe_load((ROOT / "config" / "prometheus" / "alert_rules.yml").read_text())
    doc = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "deepseekd"},
        "spec": {"groups": rules["groups"]},
    }
    head = (K8S / "base" / "prometheusrule.yaml").read_text().split("apiVersion:", 1)[0]
    return head + yaml.safe_dump(doc, sort_keys=False, width=100, allow_unicode=True)


if __name__ == "__main__" and sys.argv[1:] == ["--write-prometheusrule"]:
    (K8S / "base" / "prometheusrule.yaml").write_text(_prometheus_rule_text())

"""`deploy/kubernetes`: the manifests render with `kubectl kustomize` (CPU and GPU variants), every
Kubernetes object is valid against the Kubernetes schemas (offline: kubernetes-validate bundles
them), KEDA's ScaledObject against the schema of its documented fields (keda_scaled_object.schema.json),
and what the manifests tell paddler (flags, metric names, the desired state) is what paddler takes."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from paddler_trio.cli import build_parser
from paddler_trio.management.balancer_gauges import BalancerGauges
from paddler_trio.management.state_database import open_state_database
from paddler_trio.protocol import BalancerDesiredState, from_json

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZATIONS = {"cpu": ROOT / "deploy/kubernetes", "gpu": ROOT / "deploy/kubernetes/overlays/gpu"}
KUBERNETES_VERSION = "1.30.0"
SCALED_OBJECT_SCHEMA = json.loads((Path(__file__).parent / "keda_scaled_object.schema.json").read_text())


def kubectl() -> str:
    executable = shutil.which("kubectl")
    if executable is None:
        raise AssertionError(
            "kubectl is not installed: these tests render deploy/kubernetes with 'kubectl kustomize'. "
            "Install Debian's package as root ('apt-get install -y kubernetes-client'; `make install-test` does it)."
        )
    return executable


def render(variant: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [kubectl(), "kustomize", str(KUSTOMIZATIONS[variant])], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


@pytest.mark.parametrize("variant", sorted(KUSTOMIZATIONS))
def test_every_object_is_valid_against_its_schema(variant: str) -> None:
    documents = render(variant)
    kinds = sorted(document["kind"] for document in documents)
    assert kinds == sorted(
        ["Namespace", "Secret", "Service", "Service", "Service", "Service", "Service", "Deployment", "Deployment",
         "StatefulSet", "ScaledObject"]
    )  # fmt: skip
    for document in documents:
        if document["kind"] == "ScaledObject":
            jsonschema.validate(document, SCALED_OBJECT_SCHEMA)
        else:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_a_wrong_field_is_caught_by_the_validation() -> None:
    """The validation has teeth: a misspelt field fails, in a Kubernetes object and in the ScaledObject."""
    documents = render("cpu")
    balancer = one(documents, "Deployment", "paddler-balancer")
    container(balancer)["readinessProbe"]["httpGet"]["paht"] = "/health"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(balancer, KUBERNETES_VERSION, strict=True)
    scaled = one(documents, "ScaledObject", "paddler-agent")
    scaled["spec"]["minReplicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(scaled, SCALED_OBJECT_SCHEMA)


def test_keda_scales_the_agents_from_zero_on_metrics_the_balancer_exposes() -> None:
    exposed = {name for name, _, _ in BalancerGauges(0, 0, 0).named("paddler_")}
    for variant in KUSTOMIZATIONS:
        documents = render(variant)
        scaled = one(documents, "ScaledObject", "paddler-agent")
        assert scaled["spec"]["minReplicaCount"] == 0
        assert scaled["spec"]["scaleTargetRef"]["name"] == "paddler-agent"
        one(documents, "Deployment", "paddler-agent")
        queried = set()
        for trigger in scaled["spec"]["triggers"]:
            assert trigger["type"] == "prometheus"
            assert trigger["metadata"]["activationThreshold"] == "0"  # one buffered request wakes the fleet
            queried.update(re.findall(r"\bpaddler_[a-z_]+", trigger["metadata"]["query"]))
        assert queried == {"paddler_requests_buffered", "paddler_slots_processing"}
        assert queried <= exposed


def test_the_gpu_variant_gives_each_agent_one_gpu_and_leaves_the_rest_alone() -> None:
    cpu, gpu = render("cpu"), render("gpu")
    agent = container(one(gpu, "Deployment", "paddler-agent"))
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in json.dumps(one(cpu, "Deployment", "paddler-agent"))
    assert agent["image"].endswith("-cuda")
    assert [d for d in cpu if d["kind"] != "Deployment" and d["kind"] != "ScaledObject"] == [
        d for d in gpu if d["kind"] != "Deployment" and d["kind"] != "ScaledObject"
    ]
    assert one(cpu, "Deployment", "paddler-balancer") == one(gpu, "Deployment", "paddler-balancer")


def test_probes_and_services_reach_ports_the_balancer_listens_on() -> None:
    documents = render("cpu")
    balancer = container(one(documents, "Deployment", "paddler-balancer"))
    ports = {port["name"]: port["containerPort"] for port in balancer["ports"]}
    arguments = dict(argument.split("=", 1) for argument in balancer["args"][1:])
    assert ports == {
        "management": int(arguments["--management-addr"].rpartition(":")[2]),
        "inference": int(arguments["--inference-addr"].rpartition(":")[2]),
        "openai": int(arguments["--compat-openai-addr"].rpartition(":")[2]),
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert balancer[probe]["httpGet"]["path"] == "/health"
        assert balancer[probe]["httpGet"]["port"] in ports
    for service, port in (("paddler-inference", "inference"), ("paddler-management", "management"), ("paddler-openai", "openai")):
        (service_port,) = one(documents, "Service", service)["spec"]["ports"]
        assert service_port["targetPort"] == port


def test_the_containers_arguments_are_flags_paddler_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The agent's --management-addr names a Service, which resolves only inside the cluster.
    real_getaddrinfo = socket.getaddrinfo
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda host, *rest, **named: real_getaddrinfo("127.0.0.1", *rest, **named) if host == "paddler-management" else real_getaddrinfo(host, *rest, **named),
    )
    parser = build_parser()
    for variant in KUSTOMIZATIONS:
        documents = render(variant)
        balancer = parser.parse_args(container(one(documents, "Deployment", "paddler-balancer"))["args"])
        assert balancer.command == "balancer"
        database = open_state_database(balancer.state_database)  # parsed only: nothing is contacted
        assert type(database).__name__ == "EtcdStateDatabase"
        etcd_service = one(documents, "Service", "paddler-etcd")
        assert balancer.state_database.startswith(f"etcd://{etcd_service['metadata']['name']}:{etcd_service['spec']['ports'][0]['port']}/")
        agent_arguments = [
            argument.replace("$(POD_NAME)", "paddler-agent-0")
            for argument in container(one(documents, "Deployment", "paddler-agent"))["args"]
        ]
        agent = parser.parse_args(agent_arguments)
        assert agent.command == "agent"
        assert [address.text for address in agent.management_addr] == ["paddler-management:8060"]


def test_the_sample_desired_state_is_one_the_balancer_accepts() -> None:
    state = from_json((ROOT / "deploy/kubernetes/desired-state.json").read_bytes(), BalancerDesiredState)
    assert state.inference_parameters.validate() == []

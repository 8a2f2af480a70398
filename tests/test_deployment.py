"""docker-compose.yml and k8s/ against their schemas (offline), and the promises the docs make
about them: Elasticsearch as the store, no shared ReadWriteOnce volume, the hashers' pictures
shared with the matchers, hashers scaled by KEDA
on the real queue name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from shared.bus import topology

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("watcher", "hasher", "matcher", "actuator")
K8S_VERSION = "1.30"


def test_compose_file_follows_the_compose_specification():
    done = subprocess.run([str(Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema",
                           "vendor.compose-spec", str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_runs_the_services_on_elasticsearch_sharing_only_the_pictures_for_the_matcher():
    text = (ROOT / "docker-compose.yml").read_text()
    compose = yaml.safe_load(text)
    services = compose["services"]
    es = services["elasticsearch"]
    assert es["image"].startswith("docker.elastic.co/elasticsearch/elasticsearch:8.")
    env = es["environment"]
    assert env["discovery.type"] == "single-node"
    assert "-Xms" in env["ES_JAVA_OPTS"] and "-Xmx" in env["ES_JAVA_OPTS"]
    assert env["xpack.security.enabled"].endswith(":-true}")  # on unless the user turns it off
    assert "${ELASTIC_PASSWORD:?" in env["ELASTIC_PASSWORD"]  # no default password
    assert "_cluster/health" in " ".join(es["healthcheck"]["test"])
    named = set(compose["volumes"])
    for role in ROLES:
        service = services[role]
        assert service["depends_on"]["elasticsearch"]["condition"] == "service_healthy", role
        url = service["environment"]["IMAGE_DEDUP_ELASTICSEARCH_URL"]
        assert url.startswith("http://elastic:${ELASTIC_PASSWORD") and url.endswith("@elasticsearch:9200"), role
        assert "IMAGE_DEDUP_STORE_PATH" not in service["environment"], role
        volumes = {v.split(":")[0]: v.split(":")[1] for v in service["volumes"] if v.split(":")[0] in named}
        # the actuator's journals; the pictures the hashers leave for the matcher, where both look
        shared = {"actuator": {"journals": "/data"}, "hasher": {"pictures": "/pictures"}, "matcher": {"pictures": "/pictures"}}
        assert volumes == shared.get(role, {}), role
        assert service["environment"].get("IMAGE_DEDUP_PICTURES_DIRECTORY") == volumes.get("pictures"), role
    # the SQLite variant stays documented, commented out
    assert any(line.lstrip().startswith("#") and "IMAGE_DEDUP_STORE_PATH" in line for line in text.splitlines())


def _manifests() -> list[dict]:
    kustomization = yaml.safe_load((ROOT / "k8s" / "kustomization.yaml").read_text())
    files = kustomization["resources"]
    assert sorted(files) == sorted(p.name for p in (ROOT / "k8s").glob("*.yaml") if p.name != "kustomization.yaml")
    return [doc for name in files for doc in yaml.safe_load_all((ROOT / "k8s" / name).read_text()) if doc]


def _one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


CUSTOM = {("elasticsearch.k8s.elastic.co/v1", "Elasticsearch"), ("keda.sh/v1alpha1", "ScaledObject"),
          ("keda.sh/v1alpha1", "TriggerAuthentication")}


def test_kubernetes_manifests_follow_the_kubernetes_schemas():
    docs = _manifests()
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CUSTOM:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    assert {(d["apiVersion"], d["kind"]) for d in docs} >= CUSTOM


def test_kubernetes_store_is_elasticsearch_and_no_readwriteonce_claim_is_shared():
    docs = _manifests()
    es = _one(docs, "Elasticsearch", "image-dedup")
    assert es["spec"]["version"].startswith("8.")
    assert all(n["name"] and n["count"] >= 1 for n in es["spec"]["nodeSets"])
    es_java = [e for n in es["spec"]["nodeSets"] for c in n["podTemplate"]["spec"]["containers"] for e in c["env"]
               if e["name"] == "ES_JAVA_OPTS"]
    assert es_java and "-Xmx" in es_java[0]["value"]
    name = es["metadata"]["name"]
    rwo = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"
           and "ReadWriteOnce" in d["spec"]["accessModes"]}
    config = yaml.safe_load(_one(docs, "ConfigMap", "image-dedup-config")["data"]["config.yaml"])
    assert "store_path" not in config
    for role in ROLES:
        kind = "StatefulSet" if role == "actuator" else "Deployment"
        pod = _one(docs, kind, role)["spec"]["template"]["spec"]
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert not claims & rwo, role
        mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
        if role in ("hasher", "matcher"):  # the pictures the hashers leave for the matchers
            assert "pictures" in claims and mounts["pictures"] == config["pictures_directory"], role
        else:
            assert "pictures" not in claims, role
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["ELASTIC_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": f"{name}-es-elastic-user", "key": "elastic"}
        assert env["IMAGE_DEDUP_ELASTICSEARCH_URL"]["value"] == f"http://elastic:$(ELASTIC_PASSWORD)@{name}-es-http:9200"
        assert env["IMAGE_DEDUP_BROKER_URL"]["valueFrom"]["secretKeyRef"]["name"] == "image-dedup-broker"
    # each actuator its own journal volume, mounted where the journals are written
    actuator = _one(docs, "StatefulSet", "actuator")["spec"]
    [template] = actuator["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in actuator["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts[template["metadata"]["name"]] == config["journal_directory"]


def test_keda_scales_the_hashers_on_the_file_event_queue():
    docs = _manifests()
    scaled = _one(docs, "ScaledObject", "hasher")["spec"]
    assert _one(docs, "Deployment", scaled["scaleTargetRef"]["name"])["metadata"]["name"] == "hasher"
    assert "replicas" not in _one(docs, "Deployment", "hasher")["spec"]  # KEDA owns the count
    assert 1 <= scaled["minReplicaCount"] < scaled["maxReplicaCount"]
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "rabbitmq"
    prefix = yaml.safe_load(_one(docs, "ConfigMap", "image-dedup-config")["data"]["config.yaml"])["broker_prefix"]
    meta = trigger["metadata"]
    assert meta["queueName"] == topology.queue_name(prefix, topology.CONSUMED_KINDS["hasher"])
    assert meta["mode"] == "QueueLength" and int(meta["value"]) > 0 and meta["protocol"] == "amqp"
    auth = _one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])["spec"]
    [ref] = auth["secretTargetRef"]
    assert ref["parameter"] == "host"
    secret = _one(docs, "Secret", ref["name"])
    assert secret["stringData"][ref["key"]].startswith("amqp://")


@pytest.mark.parametrize("broken", ["replicas: two", "unknownField: 1"])
def test_the_kubernetes_check_can_fail(broken):
    doc = yaml.safe_load(f"apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\nspec:\n  {broken}\n"
                         "  selector: {matchLabels: {a: b}}\n  template: {metadata: {labels: {a: b}}, "
                         "spec: {containers: [{name: c, image: i}]}}\n")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)

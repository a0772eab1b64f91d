"""deploy/: the manifests parse and carry what their tools require; the report round-trips via logs."""

import json
import re
from pathlib import Path

import pytest
import ray
import ray.autoscaler
import yaml

from fedunlearn.errors import FedUnlearnError
from fedunlearn.cluster.submit import emit, entrypoint, extract

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_cluster_yaml_validates_against_rays_schema():
    import jsonschema

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)  # the schema `ray up` validates against
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) > 0 for t in types.values()), "needs a GPU worker type"
    assert "GPU" not in types[config["head_node_type"]]["resources"], "the head is a CPU node"


def test_rayjob_has_kuberay_required_fields():
    job = yaml.safe_load((DEPLOY / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    assert "fedunlearn run simulations/" in spec["entrypoint"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    head = cluster["headGroupSpec"]
    assert "rayStartParams" in head and head["template"]["spec"]["containers"][0]["image"]
    for group in cluster["workerGroupSpecs"]:
        assert group["groupName"] and "rayStartParams" in group and isinstance(group["replicas"], int)
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert "nvidia.com/gpu" in limits
    # The storage volume is mounted at the path the entrypoint writes to.
    mount = head["template"]["spec"]["containers"][0]["volumeMounts"][0]["mountPath"]
    assert f"--out {mount}/" in spec["entrypoint"]


def test_dockerfile_pins_the_ray_version_flower_installs():
    text = (DEPLOY / "Dockerfile").read_text()
    base = re.search(r"^FROM rayproject/ray:(\S+)", text, re.M).group(1)
    assert base.startswith(ray.__version__ + "-py311")
    assert 'pip install --no-cache-dir ".[cluster]"' in text and "dataset-fashion-mnist" in text


def test_report_survives_the_trip_through_job_logs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "report.json").write_text(json.dumps({"results": [{"method": "retrain", "test_acc": 0.9}]}))
    (src / "report.md").write_text("# title\n")
    logs = "noise before\n" + emit(src) + "\nnoise after\n"
    path = extract(logs, tmp_path / "dest")
    assert json.loads(path.read_text())["results"][0]["test_acc"] == 0.9
    assert (tmp_path / "dest" / "report.md").read_text() == "# title\n"
    with pytest.raises(FedUnlearnError, match="no report"):
        extract("job crashed\n", tmp_path / "other")


def test_entrypoint_quotes_overrides():
    cmd = entrypoint("simulations/sisa.toml", "/mnt/x/sisa", ["forget.classes=[1, 2]"])
    assert "--set 'forget.classes=[1, 2]'" in cmd and cmd.endswith("report /mnt/x/sisa --emit")

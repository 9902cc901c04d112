"""A small kustomize: enough of `kubectl kustomize` to render deploy/k8s without kubectl.

Supports what deploy/k8s uses and nothing more: `resources` (files and folders),
`components`, `namespace`, `labels` (pairs, includeTemplates), `images` (newName/newTag)
and `patches` with a `path` to a strategic-merge patch (lists of containers, env,
volumes, volumeMounts, ports, initContainers merged by `name`; `null` deletes a key;
`$patch: delete` removes the object).
Anything else raises, so a new kustomize feature in the manifests fails loudly here
instead of rendering wrongly. When kubectl is installed the tests compare the two.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

KNOWN_KEYS = {"apiVersion", "kind", "namespace", "labels", "resources", "components", "images", "patches"}
MERGE_BY_NAME = {"containers", "initContainers", "env", "volumes", "volumeMounts", "ports"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass", "RuntimeClass"}


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _merge(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_BY_NAME:
        # Like kustomize: the items the patch names come first (in patch order; merged into the
        # base item of the same name, or added), then the base items it does not name.
        def ident(item: dict[str, Any]) -> Any:
            return item.get("name", item.get("containerPort"))

        by_name = {ident(item): item for item in base}
        named = [_merge(by_name[ident(item)], item, key) if ident(item) in by_name else copy.deepcopy(item)
                 for item in patch]
        patched = {ident(item) for item in patch}
        return named + [copy.deepcopy(item) for item in base if ident(item) not in patched]
    return copy.deepcopy(patch)


def _pod_spec(obj: dict[str, Any]) -> dict[str, Any] | None:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return spec.get("template", {}).get("spec")
    return None


def _apply_labels(obj: dict[str, Any], pairs: dict[str, str], templates: bool) -> None:
    obj.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
    if templates and _pod_spec(obj) is not None:
        obj["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _apply_images(obj: dict[str, Any], images: list[dict[str, str]]) -> None:
    pod = _pod_spec(obj)
    if pod is None:
        return
    for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
        name = container["image"].split("@")[0].rsplit(":", 1)[0] if ":" in container["image"].rsplit("/", 1)[-1] \
            else container["image"]
        for rule in images:
            if rule["name"] == name:
                new = rule.get("newName", name)
                container["image"] = f"{new}:{rule['newTag']}" if "newTag" in rule else new


def render(folder: Path) -> list[dict[str, Any]]:
    """Render the kustomization in ``folder`` (kustomization.yaml) to a list of objects."""
    folder = Path(folder)
    kust = load_docs(folder / "kustomization.yaml")[0]
    unknown = set(kust) - KNOWN_KEYS
    if unknown:
        raise NotImplementedError(f"{folder}: kustomize_lite does not support {sorted(unknown)}")
    objs: list[dict[str, Any]] = []
    for entry in [*kust.get("resources", []), *kust.get("components", [])]:
        path = (folder / entry).resolve()
        objs.extend(render(path) if path.is_dir() else load_docs(path))
    for patch in kust.get("patches", []):
        if set(patch) != {"path"}:
            raise NotImplementedError(f"{folder}: only `patches: - path:` is supported, got {patch}")
        for doc in load_docs(folder / patch["path"]):
            matches = [i for i, o in enumerate(objs)
                       if o["kind"] == doc["kind"] and o["metadata"]["name"] == doc["metadata"]["name"]]
            if len(matches) != 1:
                raise ValueError(f"patch {patch['path']}: {doc['kind']}/{doc['metadata']['name']} "
                                 f"matches {len(matches)} resources")
            if doc.get("$patch") == "delete":
                del objs[matches[0]]
                continue
            objs[matches[0]] = _merge(objs[matches[0]], doc)
    for obj in objs:
        if "namespace" in kust and obj["kind"] not in CLUSTER_SCOPED:
            obj["metadata"]["namespace"] = kust["namespace"]
        for label in kust.get("labels", []):
            if label.get("includeSelectors"):
                raise NotImplementedError(f"{folder}: labels with includeSelectors are not supported")
            _apply_labels(obj, label["pairs"], label.get("includeTemplates", False))
        _apply_images(obj, kust.get("images", []))
    return objs

"""
The custom resources the operator serves, and where their definitions live.

The CustomResourceDefinitions are YAML files in ``maxine_operator/crds/``, shipped as package data:
they are the one source of truth that the Helm chart and ``manifests/`` copy or render, and that
the tests validate examples against. This module names the kinds once (group, version, plural,
kind) so that handlers, tests and the command line never spell them twice.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from importlib import resources
from typing import Any

import yaml

GROUP = "maxine.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "maxine"


@dataclasses.dataclass(frozen=True, slots=True)
class CustomResource:
    """One kind the operator serves."""

    kind: str
    plural: str

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    @property
    def file_name(self) -> str:
        return f"{self.plural}.yaml"


ACL = CustomResource(kind="MaxineACL", plural="maxineacls")
INTENTION = CustomResource(kind="MaxineIntention", plural="maxineintentions")
TRAFFIC_SPLIT = CustomResource(kind="MaxineTrafficSplit", plural="maxinetrafficsplits")
SERVICE_CONFIG = CustomResource(kind="MaxineServiceConfig", plural="maxineserviceconfigs")
DEPENDENCY = CustomResource(kind="MaxineDependency", plural="maxinedependencies")
CUSTOM_RESOURCES = (ACL, INTENTION, TRAFFIC_SPLIT, SERVICE_CONFIG, DEPENDENCY)


def crd_text(resource: CustomResource) -> str:
    """The CRD's YAML as shipped."""
    return resources.files("maxine_operator").joinpath("crds", resource.file_name).read_text(encoding="utf-8")


@cache
def load_crd(resource: CustomResource) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(crd_text(resource))
    return document


def openapi_schema(resource: CustomResource) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the served version."""
    for version in load_crd(resource)["spec"]["versions"]:
        if version["name"] == VERSION:
            schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
            return schema
    raise LookupError(f"The CRD {resource.crd_name} does not serve {VERSION}.")

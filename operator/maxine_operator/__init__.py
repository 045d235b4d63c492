"""
Maxine's Kubernetes operator: custom resources, Services and meshes kept in step with the registry.

``maxine-operator`` (``cli.main``) runs it; ``run_operator`` embeds it. The custom resource
definitions ship in ``maxine_operator/crds/`` and examples of each kind in
``maxine_operator/examples/``; ``handlers`` explains what happens to each resource.
"""

from maxine_operator.config import OperatorConfig
from maxine_operator.crds import API_VERSION, CUSTOM_RESOURCES, GROUP, VERSION
from maxine_operator.runtime import run_operator

__all__ = ["API_VERSION", "CUSTOM_RESOURCES", "GROUP", "VERSION", "OperatorConfig", "run_operator"]

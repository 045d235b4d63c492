"""
Maxine's sidecar: the agent that puts a pod in the registry while its app is ready, and takes it out.

It runs next to the app in the same pod, learns the pod's identity from the Downward API
(``POD_NAME``, ``POD_NAMESPACE``, ``POD_IP``), asks the app's own readiness check, registers the
pod once the app is ready, heartbeats, and deregisters when the app stops being ready or the pod is
told to stop. It is built on the Python SDK (``maxine_client``): retries, backoff and registering
again after a registry restart come from there. Run it as ``maxine-sidecar`` (see ``--help``).
"""

from maxine_sidecar.agent import Sidecar, State
from maxine_sidecar.readiness import Readiness, ReadinessProbe
from maxine_sidecar.settings import SettingsError, SidecarSettings, load_settings

__all__ = ["Readiness", "ReadinessProbe", "SettingsError", "Sidecar", "SidecarSettings", "State", "load_settings"]

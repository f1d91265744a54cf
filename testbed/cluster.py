"""The local scale-out cluster of ``deploy/local/cluster.py``, for tests: the very same code.

``deploy/`` is not a package, so the file is loaded by path; type checkers see it through
an ordinary import (``deploy.local.cluster`` resolves as a namespace package from the
repository root).
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

from testbed.processes import REPO_ROOT

__all__ = ("GatewayReplica", "LocalCluster", "render_nginx")

CLUSTER_PY = REPO_ROOT / "deploy" / "local" / "cluster.py"
_MODULE = "mcp_fastproxy_local_cluster"

if TYPE_CHECKING:
    from deploy.local.cluster import GatewayReplica, LocalCluster, render_nginx
else:
    _module = sys.modules.get(_MODULE)
    if _module is None:
        _spec = importlib.util.spec_from_file_location(_MODULE, CLUSTER_PY)
        assert _spec is not None and _spec.loader is not None, CLUSTER_PY
        _module = importlib.util.module_from_spec(_spec)
        sys.modules[_MODULE] = _module  # dataclasses look their module up while building
        _spec.loader.exec_module(_module)
    GatewayReplica = _module.GatewayReplica
    LocalCluster = _module.LocalCluster
    render_nginx = _module.render_nginx

"""One real authorization server (node-oidc-provider) for every auth test of a run."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from testbed.authserver import AuthServer, auth_server


@pytest.fixture(scope="session")
def authserver(processes: ExitStack) -> AuthServer:
    return auth_server(processes)

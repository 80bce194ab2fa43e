"""The testing kit's own tests: the ``l9.testing`` plugin's fixtures, on the suite's stack.

The fixtures are imported here (a conftest below the root may not name ``pytest_plugins``);
once the plugin is installed as an entry point these simply take precedence. ``l9_stack``
is the suite's own (tests/conftest.py), not a second embedded stack.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from l9.devstack import StackEndpoints
from l9.testing import (  # noqa: F401 (fixtures)
    agent_harness,
    l9_env,
    l9_keyring,
    l9_namespace,
    l9_settings,
    memory_harness,
)
from tests.integration.conftest import drop_database, new_database


@pytest.fixture(scope="session")
def l9_stack(stack: StackEndpoints) -> StackEndpoints:
    return stack


@pytest.fixture
async def kit_database(stack: StackEndpoints) -> AsyncIterator[str]:
    """A fresh database of this test (the auditor migrates it), dropped after."""
    url = await new_database(stack)
    yield url
    await drop_database(stack, url)

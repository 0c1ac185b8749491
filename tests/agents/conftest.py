import uuid

import pytest


@pytest.fixture
def tag() -> str:
    """A fresh suffix for this test's member ids and mail domain (the stack is shared)."""
    return uuid.uuid4().hex[:8]

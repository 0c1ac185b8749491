"""The KRaft cluster id given to Kafka's storage tool never starts with "-" (read as an option: the stack's Kafka
failed to start once in 64, seen in a fresh-clone CI run)."""

from __future__ import annotations

import base64
import sys
import uuid
from unittest import mock

from kagoflow.settings import PROJECT_ROOT

sys.path.insert(0, str(PROJECT_ROOT / "infra"))  # stacklib is imported as infra/stack does
from stacklib.services import _kafka_cluster_id


def test_an_id_starting_with_a_dash_is_drawn_again() -> None:
    dash = uuid.UUID(bytes=base64.urlsafe_b64decode("-Qz5N7auQTqlppx-zZp1hA=="))
    plain = uuid.UUID(int=1)
    with mock.patch("stacklib.services.uuid.uuid4", side_effect=[dash, plain]):
        assert _kafka_cluster_id() == base64.urlsafe_b64encode(plain.bytes).decode().rstrip("=")
    assert len(_kafka_cluster_id()) == 22

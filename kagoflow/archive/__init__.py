"""The ClickHouse archive: row mapping, batching, the archive consumer and the analytics queries.

``python -m kagoflow.archive`` runs the archive consumer on its own (settings from ``KAGOFLOW_*``).
"""

from kagoflow.archive.archiver import Archiver, ArchiverMetrics
from kagoflow.archive.rows import ARCHIVE_TOPICS

__all__ = ["ARCHIVE_TOPICS", "Archiver", "ArchiverMetrics"]

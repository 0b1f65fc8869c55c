"""The checksum -> location index, built once and shared read-only by all workers.

- :mod:`.records`: the record format and one generation (:class:`IndexData`);
- :mod:`.scan`: listing directories into records;
- :mod:`.shm`: where generations live, shared between processes;
- :mod:`.publisher`: the main process's thread that keeps the index fresh.

The index itself never decides that a buffer is present on its own: see
:mod:`hashserver.directory` for how lookups stay exact while other programs
add and remove files.
"""

from .publisher import IndexPublisher
from .records import ABSENT, KEY_DTYPE, PLAIN, PROMISE, RECORD, UNKNOWN_SIZE, IndexData
from .scan import SETTLE_NS, DirectoryScan, scan_all, scan_directory
from .shm import GenerationStore, IndexReader

__all__ = ["ABSENT", "KEY_DTYPE", "PLAIN", "PROMISE", "RECORD", "UNKNOWN_SIZE", "SETTLE_NS",
           "DirectoryScan", "GenerationStore", "IndexData", "IndexPublisher", "IndexReader",
           "scan_all", "scan_directory"]

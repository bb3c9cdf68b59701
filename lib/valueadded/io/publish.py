"""Publishing a release: all of its tables or none, one run per partition at a time.

A release writes one (academic year, key stage, data stage) partition of each of its
tables. Delta commits one table at a time, so publishing them together takes three things:

1. **Stage, then publish.** Every table's data files are computed and written first
   (TableStore.stage_partition: the slow part, minutes of Spark work); nothing is visible
   to readers yet. Publishing is then one metadata-only commit per table, milliseconds each.
2. **A journal.** Before the first commit, `<output>/_publish/<partition>.json` records
   each table's version before this run. If a commit fails, the tables already
   committed are put back (their partition only) and the journal is removed. If the
   process is killed part-way through the commits, the journal stays; the next run for
   the same partition finds it (recover_partition, at its start) and puts every table back
   before doing anything else.
3. **A lock per partition.** `<output>/_locks/<partition>.lock` is created exclusively
   when a run starts and removed when it ends; a second run for the same partition fails
   at once, naming the run that holds it. Runs for other partitions (another year, key
   stage or data stage) take other locks and may run at the same time. A lock left by a
   killed process on this machine (its process id no longer running) is taken over with
   a warning. A lock is created whole (its content written first, then linked to its
   name), and two runs that find the same stale lock cannot both take it over.

Putting a partition back restores the files it had at the recorded version (still on
disk: the engine never vacuums) in a new commit that touches only that partition, so a
concurrent run's partitions of the same table are never disturbed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from datetime import datetime, timezone
from pathlib import Path

from valueadded.io.delta_store import StagedPartition, TableStore
from valueadded.io.schemas import TableSchema

log = logging.getLogger(__name__)

LOCKS_DIR, JOURNAL_DIR = "_locks", "_publish"


class PartitionLockedError(RuntimeError):
    """Another run is releasing the same partition."""


def partition_name(year: int, key_stage: str, data_stage: str) -> str:
    return f"{int(year)}-{key_stage}-{data_stage}"


def _write_json_atomically(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True))
    os.replace(temporary, path)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class PartitionLock:
    """Exclusive right to release one partition of an output location (a context manager)."""

    def __init__(self, root: Path, year: int, key_stage: str, data_stage: str, run_id: str):
        self.path = Path(root) / LOCKS_DIR / f"{partition_name(year, key_stage, data_stage)}.lock"
        self.run_id = run_id
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        content = json.dumps({
            "run_id": self.run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        })
        for attempt in (1, 2):
            if self._create(content):
                self.held = True
                return
            holder = self._holder()
            if attempt == 1 and self._stale(holder) and self._remove_if_still(holder):
                log.warning("taking over the lock %s of run %s: its process %s is no longer running",
                            self.path, holder.get("run_id"), holder.get("pid"))
                continue
            holder = self._holder() or holder
            if not holder.get("run_id"):
                # Not a lock this engine writes whole: one cut short by a crash of an older
                # version, one made by hand, or (without hard links) one being written now.
                raise PartitionLockedError(
                    f"{self.path.stem} is locked by {self.path}, which names no run (it is empty or unreadable); "
                    f"if no release of this partition is running, delete it and run again."
                )
            raise PartitionLockedError(
                f"{self.path.stem} is being released by run {holder['run_id']} (process {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')}, since {holder.get('started_at', '?')}); wait for it to finish. If that "
                f"run is dead on another machine, delete {self.path} and run again."
            )

    def _create(self, content: str) -> bool:
        """Create the lock file with its content in one step; False if it exists.

        The content is written to a file of this run's own first and hard-linked to the
        lock's name, which fails if that exists: no other run ever reads an empty or half
        written lock. Where the file system has no hard links (some cloud-storage mounts),
        the lock is created exclusively and then written.
        """
        own = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        own.write_text(content)
        try:
            os.link(own, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here
            pass
        finally:
            own.unlink(missing_ok=True)
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(content)
        return True

    def _remove_if_still(self, holder: dict) -> bool:
        """Remove the lock if it is still the one `holder` was read from; True if it is gone.

        Two runs can find the same stale lock. Each moves the lock aside under a name of its
        own (a rename: only one of them gets it) and removes it only if it is the stale one;
        a lock another run has meanwhile taken over is put back, and this run is refused.
        """
        aside = self.path.with_name(f".{self.path.name}.stale.{uuid.uuid4().hex}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another run removed it first
            return True
        except OSError:  # no renames here: remove it, unchecked
            self.path.unlink(missing_ok=True)
            return True
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = {}
        if moved == holder:
            aside.unlink(missing_ok=True)
            return True
        try:
            os.link(aside, self.path)
        except FileExistsError:
            log.error("the lock %s of run %s was replaced while it was being checked", self.path, moved.get("run_id"))
        except OSError:  # no hard links here
            os.replace(aside, self.path)
        aside.unlink(missing_ok=True)
        return False

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _stale(holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int) and not _process_alive(holder["pid"])

    def release(self) -> None:
        if self.held and self._holder().get("run_id") == self.run_id:
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> PartitionLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def journal_path(root: Path, partition: tuple[int, str, str]) -> Path:
    return Path(root) / JOURNAL_DIR / f"{partition_name(*partition)}.json"


def publish(store: TableStore, staged: list[StagedPartition], run_id: str) -> dict[str, int]:
    """Commit every staged partition, or put back those committed if one fails.

    All must be of one partition, which the caller holds the lock of. Returns the Delta
    version of each table after its commit.
    """
    if not staged:
        return {}
    partitions = {s.partition for s in staged}
    if len(partitions) != 1:
        raise ValueError(f"one release publishes one partition, got {sorted(partitions)}")
    (partition,) = partitions
    journal = journal_path(store.root, partition)
    _write_json_atomically(journal, {
        "run_id": run_id,
        "partition": list(partition),
        "tables": {s.schema.name: {"audience": s.schema.audience, "previous_version": store.version(s.schema)} for s in staged},
    })
    versions: dict[str, int] = {}
    try:
        for item in staged:
            versions[item.schema.name] = store.commit(item)
    except BaseException:
        log.error("publishing run %s failed after %d of %d tables: putting them back", run_id, len(versions), len(staged))
        for item in staged[len(versions):]:  # the failed one and those not tried
            store.discard(item)
        recover_partition(store, partition, {s.schema.name: s.schema for s in staged})
        raise
    journal.unlink()
    return versions


def recover_partition(store: TableStore, partition: tuple[int, str, str], schemas: dict[str, TableSchema]) -> list[str]:
    """Put back one partition's unfinished publication, if a killed run left one."""
    journal = journal_path(store.root, partition)
    if not journal.is_file():
        return []
    content = json.loads(journal.read_text())
    unknown = sorted(set(content["tables"]) - set(schemas))
    if unknown:
        raise RuntimeError(f"{journal}: cannot put back tables {unknown}: not tables of this release")
    for name, entry in sorted(content["tables"].items()):
        store.restore_partition(schemas[name], partition, entry["previous_version"])
    log.warning("put back %d table(s) of the unfinished publication of run %s (%s)", len(content["tables"]),
                content["run_id"], partition_name(*partition))
    journal.unlink()
    return sorted(content["tables"])

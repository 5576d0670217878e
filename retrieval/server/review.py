"""The duplicate groups the review page shows: found once per generation served (dupes' default rule: the
measured cut-off and the hashes), on a thread of their own, since finding them takes longer than a request
may (seconds here, minutes for a large index): until they are found, the route answers 202 and the page asks
again."""

import threading
from pathlib import Path

from retrieval.maintenance.dupes.moves import Move, move_group
from retrieval.maintenance.dupes.run import Outcome, Request, dupes
from retrieval.search.searcher import Searcher


class _Finding:
    """One generation's groups being found on a daemon thread (a server stopping never waits for it)."""

    def __init__(self, searcher: Searcher, threshold: float | None) -> None:
        self.generation = searcher.generation
        self._request = Request(threshold=threshold)  # None: measured
        self.outcome: Outcome | None = None
        self.error: Exception | None = None
        self.done = threading.Event()
        threading.Thread(target=self._run, args=(searcher,), name="review", daemon=True).start()

    def _run(self, searcher: Searcher) -> None:
        try:
            self.outcome = dupes(searcher.settings, self._request, searcher=searcher)
        except Exception as e:  # noqa: BLE001 - handed to the request that asks next
            self.error = e
        finally:
            self.done.set()


class Review:
    """The groups of the generation served, and moving one group's extras to the server's `move_to`."""

    def __init__(self, move_to: Path | None) -> None:
        self.move_to = move_to
        self._lock = threading.Lock()
        self._finding: _Finding | None = None
        # after a move of ours, the generation it made and the cut-off to keep: only rows went, so measuring
        # again (a minute of embedding on a large index) would find the same
        self._moved: tuple[str | None, float | None] = (None, None)

    def groups(self, searcher: Searcher) -> tuple[str | None, Outcome] | None:
        """The generation the searcher holds and its groups; None while they are being found (the first call
        for a generation starts finding them). A failure to find them is raised once, then tried again."""
        with self._lock:
            if self._finding is None or self._finding.generation != searcher.generation:
                carried = self._moved[1] if self._moved[0] == searcher.generation else None
                self._finding = _Finding(searcher, carried)
            finding = self._finding
            if not finding.done.is_set():
                return None
            if finding.error is not None:
                self._finding = None
                raise finding.error
            assert finding.outcome is not None  # set whenever no error was
            return finding.generation, finding.outcome

    def move(self, searcher: Searcher, generation: str, rows: list[int], keep: int) -> list[Move]:
        """Move the extras of the group made of `rows` in `generation`, keeping row `keep`. PermissionError
        without `move_to`; LookupError when that generation is no longer served, or has no such group."""
        if self.move_to is None:
            raise PermissionError("this server was started without --move-to: the review is read-only")
        found = self.groups(searcher)
        if found is None or found[0] != generation:
            raise LookupError(f"the index changed since the page was loaded ({generation}): reload the page")
        group = next((g for g in found[1].groups if sorted(m.row for m in g.members) == sorted(rows)), None)
        if group is None:
            raise LookupError(f"no group of ids {sorted(rows)} in {generation}: reload the page")
        moves, after = move_group(searcher.store, searcher.settings.index, group, keep, self.move_to)
        self._moved = after.generation, found[1].rule.threshold
        searcher.refresh()
        return moves

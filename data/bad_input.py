"""Bad input at scale: count it, substitute it deterministically, and stop the run when there is too much of it.

A web-scale dataset always holds some broken items: a truncated JPEG, an empty caption, a sample without a label. A
run must neither crash on the first one nor silently train on garbage when a mount or a download went wrong. The
policy shared by every DataModule here:

- A bad item is replaced by a **deterministic substitute**: for an indexable dataset, the next readable item
  (``index + 1, index + 2, ...`` modulo the length); for a stream of tar shards, the next readable sample of the same
  shard (or the shard's last readable one when the bad samples end it). The number of items, hence every batch shape
  and the exact resume of an indexable stream, is unchanged.
- Each substitution is **counted by reason** (``corrupt_image``, ``too_small``, ``empty_caption``,
  ``missing_label``, ...) and warned about (the first few in full, then every power of two), **each bad file once**:
  a file already reported (by the scan of an image folder before training, `data.folder_scan`, or by an earlier
  epoch in the same loader worker) is counted again but not warned about again. The item carries ``bad_input = 1``
  so the main process sees the counts of every loader worker in the batches (`BadInputMonitor`).
- Above ``max_fraction`` of the items seen (after at least ``min_items``), the run **stops** with `TooManyBadInputs`,
  whose message names the counts, the fraction, the last bad item and the option that sets the limit.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

import torch

log = logging.getLogger(__name__)

_FULL_WARNINGS = 5  # bad items warned about one by one; after that, every power of two


class BadInputError(ValueError):
    """An item that cannot be used as it is (the reason is the message's first word).

    Args:
        reason: Short category (``corrupt_image``, ``too_small``, ``empty_caption``...).
        detail: Where and what, for messages.
        path: The file, when there is one: a file is warned about once however often it is met.
    """

    def __init__(self, reason: str, detail: str, path: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.path = reason, detail, path


class TooManyBadInputs(RuntimeError):
    """More than the configured fraction of the items seen was bad."""


class BadInputCounter:
    """Counts good and bad items and enforces the maximum bad fraction.

    Args:
        max_fraction: Largest tolerated fraction of bad items among those seen; above it `TooManyBadInputs` is raised.
            1.0 never stops; 0.0 stops at the first bad item (once ``min_items`` were seen).
        min_items: Items to see before the fraction is enforced, so that one early bad item of a huge dataset does not
            stop a run (the fraction of a handful of items says little).
        name: What is counted (the dataset), for messages.
        option: The configuration key that sets ``max_fraction``, named in the stop message.
    """

    def __init__(
        self,
        max_fraction: float = 0.01,
        min_items: int = 1000,
        name: str = "dataset",
        option: str = "data.init_args.max_bad_fraction",
    ) -> None:
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"max_fraction must be in [0, 1], got {max_fraction}")
        if min_items < 0:
            raise ValueError(f"min_items must be >= 0, got {min_items}")
        self.max_fraction, self.min_items, self.name, self.option = max_fraction, min_items, name, option
        self.seen = 0
        self.reasons: Counter[str] = Counter()
        self.last: str | None = None
        self.reported: set[str] = set()  # files already warned about (here or by a folder scan): not warned again

    @property
    def bad(self) -> int:
        """Bad items counted so far."""
        return sum(self.reasons.values())

    @property
    def fraction(self) -> float:
        """Bad items over items seen (0 before any item)."""
        return self.bad / self.seen if self.seen else 0.0

    def good(self, n: int = 1) -> None:
        """Count ``n`` usable items."""
        self.seen += n

    def add_bad(self, reason: str, where: str, key: str | None = None) -> None:
        """Count one bad item, warn (once per ``key``), and stop if the fraction is now too high.

        Args:
            reason: Short category (``corrupt_image``, ``empty_caption``, ``missing_label``...).
            where: The file, shard member or index of the item, for the messages.
            key: What identifies the bad input (its file); one already in `reported` is counted but not warned
                about again. None: ``where``.

        Raises:
            TooManyBadInputs: If the bad fraction exceeds ``max_fraction`` after ``min_items`` items.
        """
        self.seen += 1
        self.reasons[reason] += 1
        self.last = f"{reason} at {where}"
        key = where if key is None else key
        if key not in self.reported:
            self.reported.add(key)
            new = len(self.reported)
            if new <= _FULL_WARNINGS or new & (new - 1) == 0:
                log.warning("%s: substituted bad input (%s); %s", self.name, self.last, self.summary())
        self.check()

    def check(self) -> None:
        """Raise `TooManyBadInputs` if the bad fraction exceeds the limit (after ``min_items`` items)."""
        if self.seen >= self.min_items and self.bad > 0 and self.fraction > self.max_fraction:
            raise TooManyBadInputs(
                f"{self.name}: {self.bad} of {self.seen} items were bad ({100 * self.fraction:.2f}% > "
                f"{100 * self.max_fraction:.2f}%: {self.summary()}; last: {self.last}). The data is probably "
                f"damaged or mis-mounted; check it, or raise {self.option} to accept this much bad input"
            )

    def summary(self) -> str:
        """``"<bad> bad of <seen> (reason: n, ...)"``."""
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.reasons.items()))
        return f"{self.bad} bad of {self.seen}" + (f" ({reasons})" if reasons else "")

    def merge(self, seen: int, reasons: Mapping[str, int]) -> None:
        """Add counts gathered elsewhere (another worker or rank), then enforce the limit."""
        self.seen += int(seen)
        self.reasons.update({k: int(v) for k, v in reasons.items() if v})
        self.check()

    def state_dict(self) -> dict[str, Any]:
        """The counts, for checkpoints."""
        return {"seen": self.seen, "reasons": dict(self.reasons)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the counts of `state_dict`."""
        self.seen, self.reasons = int(state["seen"]), Counter({k: int(v) for k, v in state["reasons"].items()})


def substitute_next(
    load: Callable[[int], dict[str, Any]],
    index: int,
    length: int,
    counter: BadInputCounter | None,
    max_tries: int = 100,
) -> dict[str, Any]:
    """Item ``index``, or the next readable one (``index + 1, ...`` modulo ``length``) if it is bad.

    Args:
        load: Returns the item at an index, raising `BadInputError` (or ``OSError`` for unreadable files) if bad.
        index: The requested index.
        length: Dataset length (the substitute search wraps around).
        counter: Counts the bad items met (None: bad items raise instead of being substituted).
        max_tries: Consecutive bad items tolerated before giving up.

    Returns:
        The item, with ``bad_input`` = 1 if it is a substitute, else 0.
    """
    for attempt in range(min(max_tries, length)):
        at = (index + attempt) % length
        try:
            item = load(at)
        except (BadInputError, OSError) as error:
            if counter is None:
                raise
            reason = error.reason if isinstance(error, BadInputError) else "corrupt_image"
            counter.add_bad(reason, str(getattr(error, "detail", error)) or f"index {at}", getattr(error, "path", None))
            continue
        if counter is not None:
            counter.good()  # the substitute is a good read too: the fraction is bad reads over all reads
        return {**item, "bad_input": torch.tensor(int(attempt > 0))}
    raise TooManyBadInputs(f"{min(max_tries, length)} consecutive bad items starting at index {index}")


class BadInputMonitor:
    """Main-process view of the bad inputs in the training batches, across every loader worker.

    Loader workers count in their own processes; the items they substitute carry ``bad_input = 1``, so the main
    process counts exactly what training consumed. A DataModule calls `update` from ``on_after_batch_transfer``.

    Args:
        counter: The counter enforcing the limit (its ``min_items`` and ``max_fraction``).
    """

    def __init__(self, counter: BadInputCounter) -> None:
        self.counter = counter

    def update(self, batch: Mapping[str, Any]) -> int:
        """Count one batch's items and substitutes; returns the number of substitutes in it."""
        flags = batch.get("bad_input")
        if flags is None:
            return 0
        flags = torch.as_tensor(flags)
        bad = int(flags.sum())
        self.counter.merge(seen=flags.numel(), reasons={"substituted": bad})
        return bad

    def metrics(self) -> dict[str, float]:
        """``{"data/bad_inputs": n, "data/bad_fraction": f}`` for a logger."""
        return {"data/bad_inputs": float(self.counter.bad), "data/bad_fraction": self.counter.fraction}


class MonitorsBadInputs:
    """DataModule glue of the bad-input policy: counts a training batch's substituted items (from every loader
    worker), stops above the limit, logs the counts, and keeps them in the DataModule's checkpointed state.

    Mix it in before the DataModule base (``class MyData(MonitorsBadInputs, ResumableDataModule)``) and set
    ``self.bad_inputs`` to a `BadInputMonitor` in ``__init__``.
    """

    bad_inputs: BadInputMonitor

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer  # type: ignore[attr-defined]
        if trainer is not None and trainer.training and isinstance(batch, dict):
            if self.bad_inputs.update(batch) and trainer.logger is not None:
                trainer.logger.log_metrics(self.bad_inputs.metrics(), step=trainer.global_step)
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The base DataModule's state (e.g. the stream position) and the bad-input counts."""
        return {**super().state_dict(), "bad_inputs": self.bad_inputs.counter.state_dict()}  # type: ignore[misc]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        if "bad_inputs" in state:
            self.bad_inputs.counter.load_state_dict(state["bad_inputs"])
        super().load_state_dict({k: v for k, v in state.items() if k != "bad_inputs"})  # type: ignore[misc]

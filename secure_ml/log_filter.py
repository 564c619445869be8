"""A filter on Lightning's log: the advert it prints on every Trainer start is dropped."""

import logging


class DropAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: ... litlogger ... Lightning Experiments platform" line, printed on every Trainer start:
    an advert for a cloud service is noise in a tool whose runs hold private (medical) data."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


def install_advert_filter() -> None:
    """Add :class:`DropAdverts` to the logger ``rank_zero_info`` writes to (once, however often it is called)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, DropAdverts) for f in log.filters):
        log.addFilter(DropAdverts())

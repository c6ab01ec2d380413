"""The error accounting raises, importable without dp_accounting (command lines catch it)."""


class AccountingError(ValueError):
    """A privacy parameter is impossible; the message says which and what to do."""

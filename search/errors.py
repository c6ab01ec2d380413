"""The error a search raises when it cannot run as asked."""


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to do."""

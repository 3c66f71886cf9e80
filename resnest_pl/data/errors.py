"""Errors a user can fix by changing the data on disk or the data arguments."""


class DatasetNotFoundError(FileNotFoundError):
    """The data is not where the arguments say (missing folder, missing CIFAR batches, failed download)."""


class DataLayoutError(ValueError):
    """The data is there but not laid out as expected (flat folder, empty class folder, unknown class)."""

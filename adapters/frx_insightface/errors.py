"""The error the InsightFace adapter raises for a data file that does not follow its format."""


class DataFormatError(ValueError):
    """A data file that does not follow its format; the message names the file and the row or entry."""

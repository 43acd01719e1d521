"""The command line's own error, shared by `perfusion.cli` and the experiment verbs (so neither imports the other)."""


class CommandError(ValueError):
    """A command line that cannot be carried out."""

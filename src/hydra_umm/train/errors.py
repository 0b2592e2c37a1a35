"""The ways a training run stops on its own (no torch here: the CLI reports them as one error line)."""


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to do."""


class DataExhaustedError(TrainingError):
    """The batch stream ended before the run's steps did."""


class NonFiniteLossError(TrainingError):
    """Too many non-finite losses in a row."""


class TrainingInterrupted(TrainingError):
    """Ctrl-C: the run stopped after the step under way and saved it."""

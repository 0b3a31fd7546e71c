"""vgp: an experiment harness for the vanishing (and exploding) gradient problem."""

__version__ = "0.1.0"

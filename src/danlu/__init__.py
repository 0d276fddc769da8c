"""danlu (丹炉): raw text to a model you can talk to, in one hackable codebase."""

__version__ = "0.1.0"

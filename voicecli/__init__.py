"""voicecli: put voice agents on real phone numbers."""

__version__ = "0.1.0"

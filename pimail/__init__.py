"""pimail — a Whisper v6 mailserver for a Raspberry Pi."""

__version__ = "0.1.0"
CLIENT_NAME = f"pimail/v{__version__}/python"

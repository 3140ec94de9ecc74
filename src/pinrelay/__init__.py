"""pinrelay: a self-hosted push and messaging relay."""

__version__ = "0.1.0"

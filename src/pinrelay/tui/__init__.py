"""Terminal user interfaces: the chat (``pinrelay chat``)."""

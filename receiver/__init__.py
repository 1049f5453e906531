"""The SMTP receiver: runs one server's ServerConfig and enforces it on every session."""

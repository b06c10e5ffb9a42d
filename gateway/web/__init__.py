"""The browser chat page: one HTML file, one script, one stylesheet (``assets``)."""

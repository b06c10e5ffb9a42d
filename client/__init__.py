"""redchat client: the console client, the client library and the benchmark."""

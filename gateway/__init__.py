"""redchat gateway: accepts clients, speaks the wire protocol, moves messages through Redis."""

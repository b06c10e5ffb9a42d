"""What each command does, whatever framing it came in (or the worker, for
scheduled sends). Handlers know nothing about sockets: they get the command and a
``Context`` (the connection's user and sink, the store, the hub, the settings) and
emit events.

    context.py   the narrow interfaces a handler sees
    dispatch.py  command type -> handler
    chat.py      send, history, log
    sync.py      login with replay, re-sync after a pub/sub outage, status
"""

"""Streams as things operators manage: pause, resume (with catch-up), delete, purge, per-stream retention.

One implementation (`control.StreamControl`) behind the HTTP routes, `livelens streams` and the stream-control
topic (`commands.py`); catch-ups run in the stream-control actor (`catchup.py`).
"""

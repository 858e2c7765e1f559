"""Scripted fake upstream servers for agproxy's tests (real sockets, port 0)."""

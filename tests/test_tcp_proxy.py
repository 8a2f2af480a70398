"""The fault tests' relay does what they rely on: after ``refuse`` nothing passes, and a
request in flight fails at once (it must not hang until the client's timeout)."""

import socket
import threading

import pytest

from tests.services_support import TcpProxy


@pytest.fixture
def server():
    """A server that reads requests and never answers (as a store busy with one would)."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    received = threading.Event()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            if conn.recv(100):
                received.set()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], received
    listener.close()
    for conn in held:
        conn.close()


def test_refuse_ends_a_request_in_flight_and_refuses_the_next(server):
    port, received = server
    proxy = TcpProxy(port)
    client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    try:
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        assert received.wait(5)
        proxy.refuse()
        try:
            assert client.recv(10) == b""  # closed by the relay (or reset, below), not a timeout
        except ConnectionResetError:
            pass
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        proxy.resume()
        socket.create_connection(("127.0.0.1", proxy.port), timeout=5).close()
    finally:
        client.close()
        proxy.close()

"""proxyd.ipc.Channel over a real socketpair: frames and any number of fds."""
import os
import socket

from proxyd.ipc import Channel


def test_many_fds_in_one_frame_arrive_with_it():
    """More fds than one recvmsg can carry (a hot restart with hundreds of listeners)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    tx, rx = Channel(a), Channel(b)
    pipes = [os.pipe() for _ in range(150)]
    try:
        tx.send({"kind": "handover", "n": 150}, [w for _, w in pipes])
        tx.send({"kind": "next"})
        msg, fds = rx.recv()
        assert msg == {"kind": "handover", "n": 150} and len(fds) == 150
        for (r, _), fd in zip(pipes, fds):
            os.write(fd, b"x")               # the received fd is that pipe's write end
            assert os.read(r, 1) == b"x"
            os.close(fd)
        assert rx.recv() == ({"kind": "next"}, [])
    finally:
        for r, w in pipes:
            os.close(r)
            os.close(w)
        tx.close()
        rx.close()

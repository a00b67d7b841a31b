"""Round trips per second on one connection, direct, through proxyd and through real Envoy:
MongoDB (hand-built OP_QUERY against mockupdb; mongo_proxy + tcp_proxy, tcp_proxy alone,
and proxyd's mongo_proxy switched off by runtime) and Thrift (add() framed binary against a
TThreadedServer through thrift_proxy). Usage: python scripts/bench_mongo_thrift.py [N]
(run from the repository; needs the test extra, the thrift compiler and envoy)."""
import importlib
import pathlib
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from mockupdb import MockupDB  # noqa: E402
from thrift.server.TServer import TThreadedServer  # noqa: E402
from thrift.transport import TSocket  # noqa: E402

import tests.thrift_proxy.conftest as tc  # noqa: E402
from real_envoy import Envoy  # noqa: E402
from harness import Proxyd, free_port, wait_port, write_config  # noqa: E402
from tests.mongo_proxy.conftest import _handle, mongo_bootstrap  # noqa: E402
from tests.mongo_proxy.frames import op_query  # noqa: E402
from tests.mongo_proxy.test_mongo_proxy import recv_message  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 2000


def mongo_rate(port: int) -> float:
    with socket.create_connection(("127.0.0.1", port)) as s:
        msg = op_query("shop.users", {"_id": 1})
        t0 = time.monotonic()
        for _ in range(N):
            s.sendall(msg)
            recv_message(s)
        return N / (time.monotonic() - t0)


def thrift_rate(calc, port: int) -> float:
    c, t = tc.client(calc, port, "framed", "binary")
    t0 = time.monotonic()
    for i in range(N):
        c.add(i, 1)
    rate = N / (time.monotonic() - t0)
    t.close()
    return rate


def main() -> None:
    tmp = pathlib.Path(tempfile.mkdtemp())
    mongo = MockupDB(auto_ismaster={"maxWireVersion": 21, "minWireVersion": 0})
    mongo.autoresponds(_handle)
    mongo.run()
    (tmp / "calc.thrift").write_text(tc.IDL)
    subprocess.run(["thrift", "--gen", "py", "-out", str(tmp), str(tmp / "calc.thrift")], check=True)
    sys.path.insert(0, str(tmp))
    calc = (importlib.import_module("calc.Calc"), importlib.import_module("calc.ttypes"))
    tup = free_port()
    tf, pf = tc._factories("framed", "binary")
    server = TThreadedServer(calc[0].Processor(tc.Handler("s", calc[1])),
                             TSocket.TServerSocket("127.0.0.1", tup), tf, pf, daemon=True)
    threading.Thread(target=server.serve, daemon=True).start()
    wait_port(tup)

    def config():
        mp, admin, tp, pp = free_port(), free_port(), free_port(), free_port()
        cfg = mongo_bootstrap(mp, mongo.port, admin)
        t = tc.thrift_bootstrap(tp, free_port(), [tc.route("calc")], {"calc": tup})
        plain = mongo_bootstrap(pp, mongo.port, free_port())["static_resources"]["listeners"][0]
        plain["filter_chains"][0]["filters"].pop(0)
        cfg["static_resources"]["listeners"] += t["static_resources"]["listeners"] + [
            dict(plain, name="plain")]
        cfg["static_resources"]["clusters"] += t["static_resources"]["clusters"]
        return cfg, admin, mp, tp, pp

    print("direct: mongo %.0f/s, thrift %.0f/s" % (mongo_rate(mongo.port), thrift_rate(calc, tup)))
    for side in ("proxyd", "proxyd, mongo.proxy_enabled 0", "envoy"):
        cfg, admin, mp, tp, pp = config()
        if side == "envoy":
            proc = Envoy.of(cfg, tmp, admin).start()
        else:
            if side != "proxyd":
                cfg["layered_runtime"] = {"layers": [{"name": "static", "static_layer": {
                    "mongo.proxy_enabled": 0}}]}
            proc = Proxyd(write_config(tmp, cfg, "proxyd.yaml")).start()
        try:
            wait_port(mp)
            print("%s: mongo_proxy %.0f/s, tcp_proxy alone %.0f/s, thrift_proxy %.0f/s"
                  % (side, mongo_rate(mp), mongo_rate(pp), thrift_rate(calc, tp)))
        finally:
            proc.cleanup()
    mongo.stop()


if __name__ == "__main__":
    main()

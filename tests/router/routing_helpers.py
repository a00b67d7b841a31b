"""Build RouteTables from YAML through the real Envoy protos, and RequestHeads to match."""
import yaml
from google.protobuf import json_format
from envoy.config.route.v3 import route_pb2

from proxyd.http.headers import Headers
from proxyd.http.message import RequestHead, StreamInfo
from proxyd.router.route_table import RouteTable


def route_config(doc):
    if isinstance(doc, str):
        doc = yaml.safe_load(doc)
    return json_format.ParseDict(doc, route_pb2.RouteConfiguration())


def table_from(doc):
    return RouteTable(route_config(doc))


def one_vhost(routes, domains=("*",), **extra):
    """A config with a single virtual host holding `routes` (a list of route dicts)."""
    return table_from({"name": "rc", "virtual_hosts": [
        {"name": "vh", "domains": list(domains), "routes": routes}], **extra})


def request(path="/", host="example.com", method="GET", headers=(), scheme="http"):
    items = [("host", host)] if host is not None else []
    items += [(k.lower(), v) for k, v in headers]
    return RequestHead(method, path, host, scheme, "HTTP/1.1", Headers(items))


def stream_info():
    info = StreamInfo(7, "10.0.0.1:5555", "10.0.0.2:10000", "HTTP/1.1")
    info.upstream_host = "127.0.0.1:8080"
    return info

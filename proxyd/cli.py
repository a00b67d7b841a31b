"""`proxyd` command line: run | check | stop | reload | version. Flag names follow Envoy's
where Envoy has one, so operators' habits carry over."""
from __future__ import annotations

import argparse
import os
import sys
import time

COMMANDS = ("run", "check", "stop", "reload", "version")
SYSTEM_RUNTIME_DIR = "/run/proxyd"


def default_runtime_dir() -> str:
    """Where run, stop and reload meet without flags, for root and for any other user:
    systemd's $RUNTIME_DIRECTORY, else /run/proxyd when this user may write (or create)
    it, else $XDG_RUNTIME_DIR/proxyd, else /tmp/proxyd-$UID."""
    systemd = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if systemd:
        return systemd
    rt = SYSTEM_RUNTIME_DIR
    if os.access(rt if os.path.isdir(rt) else os.path.dirname(rt), os.W_OK | os.X_OK):
        return rt
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.access(xdg, os.W_OK | os.X_OK):
        return os.path.join(xdg, "proxyd")
    return "/tmp/proxyd-%d" % os.getuid()


RUNTIME_DIR_HELP = ("holds control.sock and proxyd.pid (default: $RUNTIME_DIRECTORY, else "
                    "/run/proxyd if writable, else $XDG_RUNTIME_DIR/proxyd, else /tmp/proxyd-$UID; "
                    "here %(default)s)")


def _parser() -> argparse.ArgumentParser:
    from proxyd import __version__
    ap = argparse.ArgumentParser(
        prog="proxyd", description="Envoy-compatible service and edge proxy",
        usage="proxyd -c FILE [run options]   (short for `proxyd run -c FILE`)\n"
              "       proxyd {run,check,stop,reload,version} [options]")
    ap.add_argument("--version", action="version", version="proxyd %s" % __version__,
                    help="print the version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND", prog="proxyd")

    run = sub.add_parser("run", help="serve the config (foreground)")
    run.add_argument("-c", "--config-path", required=True, help="Envoy v3 bootstrap (YAML or JSON)")
    run.add_argument("--concurrency", type=int, default=os.cpu_count() or 1,
                     help="worker processes (default: number of CPUs)")
    run.add_argument("--runtime-dir", default=default_runtime_dir(), help=RUNTIME_DIR_HELP)
    run.add_argument("--base-id", type=int, default=0, help="separates proxyd families on one host")
    run.add_argument("--drain-time-s", type=float, default=60.0,
                     help="how long in-flight requests may take to finish on stop or reload")
    run.add_argument("--parent-shutdown-time-s", type=float, default=90.0,
                     help="hot restart: the old master exits by then at the latest")
    run.add_argument("--service-node", help="node id (overrides the bootstrap's node.id)")
    run.add_argument("--service-cluster", help="node cluster (overrides node.cluster)")
    run.add_argument("--service-zone", help="node zone (overrides node.locality.zone)")
    run.add_argument("--restart-epoch", type=int, default=0, help=argparse.SUPPRESS)
    run.add_argument("-l", "--log-level", default="info",
                     choices=("trace", "debug", "info", "warning", "warn", "error", "critical", "off"),
                     help="operations log level (default: %(default)s)")
    run.add_argument("--log-format", default="text", choices=("text", "json"),
                     help="operations log on stderr: human text or one JSON object a line "
                          "(default: %(default)s)")

    check = sub.add_parser("check", help="validate a config without serving")
    check.add_argument("-c", "--config-path", required=True,
                       help="Envoy v3 bootstrap (YAML or JSON) to validate")
    check.add_argument("config", nargs="?", help=argparse.SUPPRESS)

    for name, text in (("stop", "graceful stop of the running proxyd"),
                       ("reload", "hot restart the running proxyd with the config on disk")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--runtime-dir", default=default_runtime_dir(),
                       help="the running proxyd's runtime dir: " + RUNTIME_DIR_HELP)
        p.add_argument("--timeout", type=float, default=None,
                       help="give up waiting after this many seconds")
    sub.add_parser("version", help="print the version")
    return ap


def _normalise(argv: list[str]) -> list[str]:
    """`proxyd -c FILE` means `proxyd run -c FILE`; `proxyd check FILE` is accepted too."""
    if argv and argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        return ["run"] + argv
    if len(argv) == 2 and argv[0] == "check" and not argv[1].startswith("-"):
        return ["check", "-c", argv[1]]
    return argv


def cmd_check(args) -> int:
    from proxyd.config import ConfigError, load_bootstrap, summarize
    try:
        bs = load_bootstrap(args.config_path)
    except ConfigError as e:
        for line in e.errors:
            print(line, file=sys.stderr)
        print("proxyd check: %s: %d error(s)" % (args.config_path, len(e.errors)), file=sys.stderr)
        return 1
    except OSError as e:
        print("proxyd check: %s" % e, file=sys.stderr)
        return 1
    print("%s: OK (%s)" % (args.config_path, summarize(bs)))
    return 0


def cmd_run(args) -> int:
    from gevent import monkey
    monkey.patch_all()
    from proxyd.master.arbiter import run
    from proxyd.observability.logging import configure_logging
    configure_logging(args.log_level, args.log_format, role="master", epoch=args.restart_epoch)
    if args.concurrency < 1:
        print("proxyd: --concurrency must be at least 1", file=sys.stderr)
        return 1
    return run(args)


def _pid_alive(pid: int) -> bool:
    """True while `pid` runs; a zombie (exited, not yet reaped by its parent) has stopped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def cmd_stop(args) -> int:
    from proxyd.master.control import request
    try:
        resp = request(args.runtime_dir, {"cmd": "stop"}, timeout=10)
    except OSError as e:
        print("proxyd stop: no running proxyd in %s (%s)" % (args.runtime_dir, e), file=sys.stderr)
        return 1
    pid = resp.get("pid")
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while pid and _pid_alive(pid):
        if deadline and time.monotonic() > deadline:
            print("proxyd stop: master %d still draining after %ss" % (pid, args.timeout),
                  file=sys.stderr)
            return 1
        time.sleep(0.05)
    print("proxyd stopped (master pid %s)" % pid)
    return 0


def cmd_reload(args) -> int:
    from proxyd.master.control import request
    try:
        resp = request(args.runtime_dir, {"cmd": "reload"}, timeout=args.timeout)
    except OSError as e:
        print("proxyd reload: no running proxyd in %s (%s)" % (args.runtime_dir, e), file=sys.stderr)
        return 1
    if not resp.get("ok"):
        print("proxyd reload: %s" % resp.get("error", "failed"), file=sys.stderr)
        return 1
    print("proxyd reloaded: new master pid %s, epoch %s" % (resp.get("pid"), resp.get("epoch")))
    return 0


def cmd_version(args) -> int:
    from proxyd import __version__
    print("proxyd %s" % __version__)
    return 0


def main(argv=None) -> None:
    argv = _normalise(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(argv)
    handler = {"run": cmd_run, "check": cmd_check, "stop": cmd_stop, "reload": cmd_reload,
               "version": cmd_version}
    sys.exit(handler[args.command](args))

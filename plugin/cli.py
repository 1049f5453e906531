"""The ``kubectl-smtpgate`` command: arguments as kubectl takes them, the user's kubeconfig
and context, the reads it needs from the API; views.py makes the output."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from smtpgate.connectors import config, crd, ranges
from smtpgate.connectors.errors import SpecError

from . import views

Body = dict[str, Any]
TIMEOUT = (5.0, 30.0)
# The operator names a server's ConfigMap "<server>-receiver" and keeps the compiled
# ServerConfig under this key (operator/resources.py).
CONFIG_SUFFIX, CONFIG_KEY = "-receiver", "config.json"


class Failure(Exception):
    """Something the user should read on stderr; the command exits 1."""


class Cluster:
    """Reads from the API server of the user's kubeconfig and context, as kubectl would."""

    def __init__(self, kubeconfig: str | None, context: str | None) -> None:
        from kubernetes import client
        from kubernetes import config as kubeconfig_

        try:
            contexts, active = kubeconfig_.list_kube_config_contexts(config_file=kubeconfig)
            api = kubeconfig_.new_client_from_config(config_file=kubeconfig, context=context)
        except (kubeconfig_.ConfigException, OSError) as err:
            raise Failure(f"no usable kubeconfig: {err}") from None
        chosen = next((c for c in contexts if c["name"] == (context or active["name"])), active)
        self.namespace: str = (chosen.get("context") or {}).get("namespace") or "default"
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)

    def _call(self, what: str, call: Any, *args: Any) -> Any:
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return call(*args, _request_timeout=TIMEOUT)
        except ApiException as err:
            if err.status == 404:
                return None
            reason = err.reason
            with contextlib.suppress(ValueError, AttributeError):
                reason = json.loads(err.body or "{}").get("message") or reason
            raise Failure(f"{what}: {err.status} {reason}") from None
        except (HTTPError, OSError) as err:
            raise Failure(f"cannot reach the API server: {err}") from None

    def get(self, plural: str, namespace: str, name: str) -> Body | None:
        found: Body | None = self._call(
            f'{plural} "{name}"',
            self.custom.get_namespaced_custom_object,
            crd.GROUP,
            crd.VERSION,
            namespace,
            plural,
            name,
        )
        return found

    def list(self, plural: str, namespace: str | None) -> list[Body]:
        if namespace is None:
            found = self._call(
                plural, self.custom.list_cluster_custom_object, crd.GROUP, crd.VERSION, plural
            )
        else:
            found = self._call(
                plural,
                self.custom.list_namespaced_custom_object,
                crd.GROUP,
                crd.VERSION,
                namespace,
                plural,
            )
        if found is None:
            raise Failure(f"the API server does not serve {plural}.{crd.GROUP}: are the CRDs in?")
        items: list[Body] = found.get("items") or []
        return items

    def compiled_config(self, namespace: str, server: str) -> config.ServerConfig | None:
        name = server + CONFIG_SUFFIX
        found = self._call(
            f'configmap "{name}"', self.core.read_namespaced_config_map, name, namespace
        )
        text = ((found.data if found is not None else None) or {}).get(CONFIG_KEY)
        if text is None:
            return None
        try:
            return config.ServerConfig.from_json(text)
        except ValueError as err:
            raise Failure(
                f"configmap {name!r} holds a config this plugin cannot read: {err}"
            ) from None


def _permissions(cluster: Cluster, namespace: str, args: argparse.Namespace) -> str:
    connector = cluster.get("receiveconnectors", namespace, args.connector)
    if connector is None:
        raise Failure(f'receiveconnector "{args.connector}" not found in namespace {namespace}')
    server_name = views.server_of(connector)
    server = cluster.get("transportservers", namespace, server_name) if server_name else None
    try:
        rows, note = views.effective_permissions(connector, server)
    except SpecError as err:
        raise Failure(f"receiveconnector {args.connector!r} has an invalid spec: {err}") from None
    if note:
        print(f"note: {note}", file=sys.stderr)
    return views.permissions_table(rows)


def _which(cluster: Cluster, namespace: str, args: argparse.Namespace) -> str:
    try:
        remote = ranges.parse_address(args.source)
        local = ranges.parse_address(args.to) if args.to else None
    except ValueError as err:
        raise Failure(str(err)) from None
    cfg = cluster.compiled_config(namespace, args.server)
    if cfg is None:
        if cluster.get("transportservers", namespace, args.server) is None:
            raise Failure(f'transportserver "{args.server}" not found in namespace {namespace}')
        raise Failure(
            f"transportserver {args.server!r} has no compiled config yet (ConfigMap "
            f"{args.server}{CONFIG_SUFFIX}): is the operator running? kubectl smtpgate status"
        )
    return views.which(cfg, remote, args.port, local, args.user)


def _status(cluster: Cluster, namespace: str, args: argparse.Namespace) -> str:
    scope = None if args.all_namespaces else namespace
    return views.status(
        cluster.list("transportservers", scope),
        cluster.list("receiveconnectors", scope),
        cluster.list("accepteddomains", scope),
        wide=scope is None,
    )


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} must be a port, 1 to 65535")
    return int(text)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config)"
    )
    common.add_argument("--context", help="kubeconfig context (default: the current context)")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    top = argparse.ArgumentParser(
        prog="kubectl smtpgate",
        description="Look at smtpgate's receive connectors as the operator and receivers see them.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = commands.add_parser(
        "permissions",
        parents=[common],
        help="Get-ADPermission: a connector's effective permissions",
        description="A connector's effective permissions (principal, extended right, "
        "Allow/Deny): from its status, or computed from its spec when the status has none.",
    )
    command.add_argument("connector", metavar="CONNECTOR")
    command.set_defaults(run=_permissions)
    command = commands.add_parser(
        "which",
        parents=[common],
        help="which connector a client lands on, and what it may do there",
        description="Which connector of SERVER a client from IP connecting to PORT lands on "
        "(the most specific remote range among the connectors bound there), read from the "
        "server's compiled config, and what the anonymous principal and an AUTH'd user may do.",
    )
    command.add_argument("server", metavar="SERVER")
    command.add_argument("--from", dest="source", required=True, metavar="IP")
    command.add_argument("--port", type=_port, required=True, metavar="N")
    command.add_argument(
        "--to",
        metavar="IP",
        help="the local address connected to (default: each address bound on PORT, then any other)",
    )
    command.add_argument("--user", help="the AUTH'd user's name, for entries that name one user")
    command.set_defaults(run=_which)
    command = commands.add_parser(
        "status",
        parents=[common],
        help="servers, connectors, certificates and conditions at a glance",
    )
    command.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    command.set_defaults(run=_status)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        cluster = Cluster(args.kubeconfig, args.context)
        print(args.run(cluster, args.namespace or cluster.namespace, args))
    except Failure as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

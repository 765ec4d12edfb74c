"""`kubectl modelship`: manual control and status of canary rollouts, as a kubectl plugin.

    kubectl modelship promote NAME [--full]   finish the current step (or every step) and go on
    kubectl modelship abort NAME              traffic back to the stable revision
    kubectl modelship retry NAME              try the aborted revision again from step 0
    kubectl modelship status NAME [--watch]   the rollout from status
    kubectl modelship list [-A]               every ModelDeployment's rollout, one line each

An action is one annotation, `modelship.io/action: <verb>@<nonce>`, set with a merge patch: the
operator acts on it and removes it, so the plugin needs no more rights than patching the
object. The decisions (is this action sensible now? what is the patch?) are pure functions
here, and the text of `status` lives in `plugin.text`; `main` only does the I/O.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from modelship.operator import bodies, naming
from modelship.operator.plugin.text import format_rollout
from modelship.operator.rollout import state

PROMOTE, PROMOTE_FULL = state.VERB_PROMOTE, state.VERB_PROMOTE_FULL
ABORT, RETRY = state.VERB_ABORT, state.VERB_RETRY
SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130  # argparse exits 2 on usage errors


class CliError(Exception):
    """Something the user should read on stderr; the command exits 1."""


# --- the pure decisions -------------------------------------------------------------------


def _rollout(md: Mapping[str, Any]) -> Mapping[str, Any]:
    return bodies.status_of(md).get("rollout") or {}


def nonce(now: datetime) -> str:
    """An RFC 3339 UTC time with milliseconds: unique enough for one person's commands."""
    return now.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def action_patch(verb: str, now: datetime) -> dict[str, Any]:
    """The merge patch that asks the operator for one action."""
    return {"metadata": {"annotations": {naming.ANNOTATION_ACTION: f"{verb}@{nonce(now)}"}}}


def verb_of(command: str, full: bool = False) -> str:
    return PROMOTE_FULL if command == PROMOTE and full else command


def refusal(verb: str, md: Mapping[str, Any]) -> str | None:
    """Why `verb` makes no sense for this ModelDeployment now, or None when it does.

    Judged from status, which may lag a moment behind the operator: `--force` skips this.
    """
    metadata, rollout = bodies.meta(md), _rollout(md)
    name = metadata.get("name", "?")
    if verb in (PROMOTE, PROMOTE_FULL, ABORT) and not rollout.get("canaryRevision"):
        return f"no canary rollout of {name} is in progress (status.rollout has no canaryRevision)"
    if verb == RETRY and not rollout.get("abortedRevision"):
        return f"no aborted rollout of {name} to retry (status.rollout has no abortedRevision)"
    # A second action written before the operator handled the first would replace it: the
    # first would then never happen (two promotes in a row would promote once).
    pending = (metadata.get("annotations") or {}).get(naming.ANNOTATION_ACTION)
    if pending and pending != rollout.get("handledAction"):
        return f"the operator has not yet acted on the previous action {pending!r} of {name}"
    return None


def describe_action(verb: str, md: Mapping[str, Any]) -> str:
    rollout = _rollout(md)
    canary = rollout.get("canaryRevision") or "-"
    return {
        PROMOTE: f"promote canary {canary}: finish the current step and go on",
        PROMOTE_FULL: f"promote canary {canary} fully: skip every remaining step",
        ABORT: f"abort canary {canary}: all traffic back to the stable revision",
        RETRY: f"retry revision {rollout.get('abortedRevision') or '-'} from the first step",
    }[verb]


def context_namespace(
    contexts: Sequence[Mapping[str, Any]], active: Mapping[str, Any] | None, name: str | None
) -> str | None:
    """The namespace of the named context (or the active one) of a kubeconfig, if it sets one."""
    chosen = next((c for c in contexts if c.get("name") == name), None) if name else active
    return ((chosen or {}).get("context") or {}).get("namespace") or None


def list_row(md: Mapping[str, Any]) -> list[str]:
    """NAMESPACE, NAME, PHASE, STABLE, CANARY, STEP, WEIGHT of one ModelDeployment."""
    status, rollout = bodies.status_of(md), _rollout(md)
    step, steps, weight = rollout.get("step"), rollout.get("steps"), rollout.get("actualWeight")
    in_progress = bool(rollout.get("canaryRevision"))
    if weight is None and rollout.get("replicaWeight") is not None:
        weight = f"~{rollout['replicaWeight']}"  # by ready pods: not measured
    return [
        str(bodies.meta(md).get("namespace") or "-"),
        str(bodies.meta(md).get("name") or "-"),
        str(status.get("phase") or "-"),
        str(rollout.get("stableVersion") or (status.get("model") or {}).get("version") or "-"),
        str(rollout.get("canaryVersion") or "?") if in_progress else "-",
        f"{step}/{steps}" if in_progress and step is not None and steps is not None else "-",
        f"{weight}%" if in_progress and weight is not None else "-",
    ]


def list_table(items: Sequence[Mapping[str, Any]], *, all_namespaces: bool) -> str:
    header = ["NAMESPACE", "NAME", "PHASE", "STABLE", "CANARY", "STEP", "CANARY WEIGHT"]
    table = [header, *(list_row(md) for md in items)]
    if not all_namespaces:
        table = [row[1:] for row in table]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in table
    )


# --- arguments ----------------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser, default: Any) -> None:
    parser.add_argument("-n", "--namespace", default=default, help="default: the context's")
    parser.add_argument("--kubeconfig", default=default, help="default: $KUBECONFIG or ~/.kube/config")
    parser.add_argument("--context", default=default, help="default: the current context")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl modelship", description="Control and watch the canary rollouts of ModelDeployments."
    )
    _connection_options(parser, default=None)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # The connection options are accepted after the subcommand too, as kubectl does; SUPPRESS
    # keeps a subcommand from resetting what was given before it.
    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _connection_options(sub, default=argparse.SUPPRESS)
        return sub

    def action(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = command(name, help_text)
        sub.add_argument("name", metavar="NAME", help="the ModelDeployment")
        sub.add_argument(
            "--force", action="store_true", help="set the action even when status says it makes no sense"
        )
        return sub

    promote = action(PROMOTE, "finish the current pause or step of the canary and go on")
    promote.add_argument(
        "--full", action="store_true", help="skip every remaining step: canary to 100%% and promote"
    )
    action(ABORT, "abort the canary: traffic fully back to the stable revision")
    action(RETRY, "try the aborted revision again from the first step")

    status = command("status", "print the rollout of a ModelDeployment")
    status.add_argument("name", metavar="NAME", help="the ModelDeployment")
    status.add_argument("-w", "--watch", action="store_true", help="print again on every change")

    listing = command("list", "one line per ModelDeployment")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    return parser


# --- I/O ----------------------------------------------------------------------------------


def is_loopback_url(url: str) -> bool:
    """Whether the URL names this machine: `localhost` or a loopback address (Go's, so kubectl's, rule
    for skipping the environment's proxy)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class Connection:
    api: Any  # kubernetes.client.CustomObjectsApi
    namespace: str


def connect(kubeconfig: str | None, context: str | None, namespace: str | None) -> Connection:
    """Load credentials as kubectl does: --kubeconfig, $KUBECONFIG, ~/.kube/config, in-cluster."""
    # Imported here so that `--help` and usage errors answer without loading the client, and
    # so that an install without it says what is missing.
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise CliError(f"kubectl modelship needs the kubernetes Python client ({exc})") from exc

    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    have_file = any(Path(p).expanduser().is_file() for p in path.split(os.pathsep) if p)
    if have_file or kubeconfig or context:
        try:
            contexts, active = config.list_kube_config_contexts(config_file=path)
            namespace = namespace or context_namespace(contexts, active, context)
            # What config.new_client_from_config does, with a look at the proxy before the client
            # is made. persist_config=False: a plugin never rewrites the user's kubeconfig.
            configuration = client.Configuration()
            config.load_kube_config(
                config_file=path, context=context, client_configuration=configuration, persist_config=False
            )
        except config.ConfigException as exc:
            raise CliError(f"cannot use the kubeconfig {path}: {exc}") from exc
        if is_loopback_url(configuration.host) and getattr(configuration, "_proxy_from_env", False):
            # The client takes HTTP(S)_PROXY from the environment; as kubectl, an API server on this
            # machine is reached direct all the same (a kubeconfig's own proxy-url still applies).
            configuration.proxy = None
        api_client = client.ApiClient(configuration)
    else:
        configuration = client.Configuration()
        try:
            config.load_incluster_config(client_configuration=configuration)
        except config.ConfigException as exc:
            raise CliError(f"no kubeconfig at {path} and not inside a cluster ({exc})") from exc
        configuration.proxy = None  # the API server's ClusterIP: never through HTTP(S)_PROXY
        api_client = client.ApiClient(configuration)
        if namespace is None and SERVICE_ACCOUNT_NAMESPACE.is_file():
            namespace = SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or None
    return Connection(client.CustomObjectsApi(api_client), namespace or "default")


def _call(what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """One API call; its failures become a one-line error, as kubectl reports them."""
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return method(*args, **kwargs)
    except ApiException as exc:
        if exc.status == 404:
            raise CliError(f"{what} not found") from exc
        raise CliError(f"{what}: the API server answered {exc.status} {exc.reason}") from exc
    except HTTPError as exc:
        raise CliError(f"{what}: cannot reach the API server: {exc}") from exc


def _what(conn: Connection, name: str) -> str:
    return f'modeldeployment "{name}" in namespace "{conn.namespace}"'


def _get(conn: Connection, name: str) -> dict[str, Any]:
    md: dict[str, Any] = _call(
        _what(conn, name),
        conn.api.get_namespaced_custom_object,
        naming.GROUP,
        naming.VERSION,
        conn.namespace,
        naming.PLURAL,
        name,
    )
    return md


def run_action(conn: Connection, verb: str, name: str, *, force: bool, out: Callable[[str], None]) -> None:
    md = _get(conn, name)
    why_not = refusal(verb, md)
    if why_not and not force:
        raise CliError(f"{why_not}; see `kubectl modelship status {name}`, or use --force to set it anyway")
    patch = action_patch(verb, datetime.now(UTC))
    _call(
        _what(conn, name),
        conn.api.patch_namespaced_custom_object,
        naming.GROUP,
        naming.VERSION,
        conn.namespace,
        naming.PLURAL,
        name,
        patch,
        _content_type="application/merge-patch+json",
    )
    value = patch["metadata"]["annotations"][naming.ANNOTATION_ACTION]
    out(
        f"modeldeployment {conn.namespace}/{name}: asked to {describe_action(verb, md)} "
        f"({naming.ANNOTATION_ACTION}={value}); the operator acts on it, follow with "
        f"`kubectl modelship status {name} -n {conn.namespace}`\n"
    )


def _ageless(md: Mapping[str, Any]) -> str:
    """What a watch compares: the text without the ages, which change with every look."""
    return format_rollout(md, now=datetime.min.replace(tzinfo=UTC))


def run_status(conn: Connection, name: str, *, watch: bool, out: Callable[[str], None]) -> None:
    md = _get(conn, name)
    out(format_rollout(md, now=datetime.now(UTC)))
    if watch:
        _watch(conn, name, md, out)


def _watch(conn: Connection, name: str, md: dict[str, Any], out: Callable[[str], None]) -> None:
    """Print the status again whenever its text changes, until the object is deleted."""
    from kubernetes import watch
    from kubernetes.client.rest import ApiException
    from urllib3.exceptions import HTTPError

    shown = _ageless(md)
    version = md["metadata"].get("resourceVersion")

    def show(obj: dict[str, Any]) -> None:
        nonlocal shown, version
        version = obj.get("metadata", {}).get("resourceVersion", version)
        if _ageless(obj) != shown:
            shown = _ageless(obj)
            out("\n" + format_rollout(obj, now=datetime.now(UTC)))

    while True:
        try:
            for event in watch.Watch().stream(
                conn.api.list_namespaced_custom_object,
                naming.GROUP,
                naming.VERSION,
                conn.namespace,
                naming.PLURAL,
                field_selector=f"metadata.name={name}",
                resource_version=version,
                timeout_seconds=300,  # then watch again from the last version seen
            ):
                if event["type"] == "DELETED":
                    out(f"modeldeployment {conn.namespace}/{name} was deleted\n")
                    return
                if event["type"] in ("ADDED", "MODIFIED"):
                    show(event["object"])
        except HTTPError as exc:
            raise CliError(f"watching {_what(conn, name)}: lost the API server: {exc}") from exc
        except ApiException as exc:
            if exc.status != 410:
                raise CliError(f"watching {_what(conn, name)}: {exc.status} {exc.reason}") from exc
            # The version we watched from is too old: look again, then watch from there.
            show(_get(conn, name))


def run_list(conn: Connection, *, all_namespaces: bool, out: Callable[[str], None]) -> None:
    args = (naming.GROUP, naming.VERSION, naming.PLURAL)
    if all_namespaces:
        found = _call("modeldeployments", conn.api.list_cluster_custom_object, *args)
    else:
        found = _call(
            "modeldeployments",
            conn.api.list_namespaced_custom_object,
            args[0],
            args[1],
            conn.namespace,
            args[2],
        )
    items = found.get("items") or []
    if not items:
        where = "any namespace" if all_namespaces else f'namespace "{conn.namespace}"'
        out(f"no modeldeployments in {where}\n")
    else:
        out(list_table(items, all_namespaces=all_namespaces))


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        conn = connect(args.kubeconfig, args.context, args.namespace)
        if args.command == "status":
            run_status(conn, args.name, watch=args.watch, out=_write)
        elif args.command == "list":
            run_list(conn, all_namespaces=args.all_namespaces, out=_write)
        else:
            verb = verb_of(args.command, getattr(args, "full", False))
            run_action(conn, verb, args.name, force=args.force, out=_write)
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # the way out of --watch
        return EXIT_INTERRUPTED
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

"""The real Argo CD of `hack/argocd`, as the GitOps tests drive it: a Git repository its repo
server reads (served by `git daemon`), Applications applied to the cluster, and Argo CD's own
verdicts (sync status, health, the sync operation) read from their status."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.conftest import ROOT
from tests.support import wait_until

HACK_ARGOCD = ROOT / "hack" / "argocd"
GROUP, VERSION, PLURAL = "argoproj.io", "v1alpha1", "applications"
REFRESH = "argocd.argoproj.io/refresh"


def _env_lines(text: str) -> dict[str, str]:
    return dict(
        line.removeprefix("export ").split("=", 1) for line in text.splitlines() if line.startswith("export ")
    )


@contextmanager
def running_argocd() -> Iterator[dict[str, str]]:
    """`hack/argocd up` for the tests that need it, `down` after them: its settings (namespace,
    Git root and URL)."""
    up = subprocess.run([str(HACK_ARGOCD), "up"], capture_output=True, text=True, timeout=300, check=False)
    if up.returncode != 0:
        subprocess.run([str(HACK_ARGOCD), "down"], capture_output=True, timeout=120, check=False)
        raise AssertionError(f"hack/argocd up failed:\n{up.stderr[-3000:]}")
    try:
        yield _env_lines(up.stdout)
    finally:
        subprocess.run([str(HACK_ARGOCD), "down"], capture_output=True, timeout=120, check=False)


class GitRepo:
    """A bare repository in the folder `git daemon` serves, and a working copy that commits to it."""

    def __init__(self, git_root: Path, git_url: str, name: str, work: Path) -> None:
        self.bare = git_root / f"{name}.git"
        self.url = f"{git_url}/{name}.git"
        self.work = work
        self._git_env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "modelship-tests",
            "GIT_AUTHOR_EMAIL": "tests@modelship.invalid",
            "GIT_COMMITTER_NAME": "modelship-tests",
            "GIT_COMMITTER_EMAIL": "tests@modelship.invalid",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(work.parent),
        }
        self.git("init", "-q", "--bare", "-b", "main", str(self.bare), cwd=git_root)
        self.git("init", "-q", "-b", "main", str(work), cwd=work.parent)
        self.git("remote", "add", "origin", str(self.bare))

    def git(self, *args: str, cwd: Path | None = None) -> str:
        out = subprocess.run(
            ["git", *args],
            cwd=cwd or self.work,
            env=self._git_env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if out.returncode != 0:
            raise AssertionError(f"git {' '.join(args)} failed: {out.stderr}")
        return out.stdout.strip()

    def copy_in(self, source: Path, target: str) -> None:
        """`source` (a file or folder of this checkout) into the working copy as `target`."""
        destination = self.work / target
        destination.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, destination, dirs_exist_ok=True)
        else:
            shutil.copyfile(source, destination)

    def write(self, target: str, text: str) -> None:
        path = self.work / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def commit(self, message: str) -> str:
        """Commit everything in the working copy, push it, and return the commit's SHA."""
        self.git("add", "-A")
        self.git("commit", "-q", "-m", message)
        self.git("push", "-q", "origin", "main")
        return self.git("rev-parse", "HEAD")


@dataclass
class ArgoCD:
    api: client.ApiClient
    namespace: str

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def apply(self, app: dict[str, Any]) -> None:
        body = {**app, "metadata": {**app["metadata"], "namespace": self.namespace}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, body)

    def get(self, name: str) -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name))

    def delete(self, name: str) -> None:
        """Delete the Application only: without Argo CD's resources finalizer nothing it synced is
        pruned (the CRDs it applied are shared by the whole test cluster)."""
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)

    def refresh(self, name: str) -> dict[str, Any]:
        """Ask for a refresh, as a Git webhook or the UI's Refresh does, and wait until the
        controller has done it: it takes the annotation off only once it has compared the
        Application with Git and the cluster and written the outcome to its status."""
        self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, {"metadata": {"annotations": {REFRESH: "normal"}}}
        )

        def refreshed() -> dict[str, Any] | None:
            app = self.get(name)
            return app if REFRESH not in (app["metadata"].get("annotations") or {}) else None

        return wait_until(refreshed, timeout=60, interval=0.5, what=f"Argo CD to refresh {name}")

    def wait(
        self,
        name: str,
        *,
        revision: str,
        health: str,
        timeout: float = 240,
    ) -> dict[str, Any]:
        """The Application once Argo CD says it is Synced to `revision`, its last sync operation
        succeeded at that revision, and its health is `health`."""

        def reached() -> dict[str, Any] | None:
            app = self.get(name)
            status = app.get("status") or {}
            operation = status.get("operationState") or {}
            synced = status.get("sync", {}).get("status") == "Synced"
            at = status.get("sync", {}).get("revision") == revision
            succeeded = operation.get("phase") == "Succeeded" and (
                operation.get("syncResult", {}).get("revision") == revision
            )
            healthy = status.get("health", {}).get("status") == health
            return app if synced and at and succeeded and healthy else None

        try:
            return wait_until(
                reached, timeout=timeout, interval=1, what=f"{name} Synced at {revision[:8]}, {health}"
            )
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nthe Application now: {summary(self.get(name))}") from None


def summary(app: dict[str, Any]) -> str:
    """What Argo CD says of an Application, short enough for an assertion message."""
    status = app.get("status") or {}
    operation = status.get("operationState") or {}
    return yaml.safe_dump(
        {
            "sync": status.get("sync"),
            "health": status.get("health"),
            "conditions": status.get("conditions"),
            "operation": {k: operation.get(k) for k in ("phase", "message")},
            "resources": [
                {
                    "kind": r.get("kind"),
                    "name": r.get("name"),
                    "status": r.get("status"),
                    "health": r.get("health"),
                }
                for r in status.get("resources") or ()
            ],
        },
        width=200,
    )


def resource(app: dict[str, Any], kind: str, name: str) -> dict[str, Any]:
    """The entry of `status.resources` for one object the Application manages."""
    found = [r for r in app["status"].get("resources") or () if r["kind"] == kind and r["name"] == name]
    assert len(found) == 1, summary(app)
    return dict(found[0])

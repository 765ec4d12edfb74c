"""The chart ships a copy of crds/ (Helm cannot read outside the chart): it must not drift."""

from __future__ import annotations

from tests.conftest import ROOT

SOURCE = ROOT / "crds"
COPY = ROOT / "helm" / "modelship" / "crds"


def test_the_chart_ships_every_crd_of_crds_and_nothing_else() -> None:
    assert sorted(p.name for p in COPY.glob("*.yaml")) == sorted(p.name for p in SOURCE.glob("*.yaml"))


def test_each_crd_in_the_chart_is_byte_for_byte_the_one_in_crds() -> None:
    stale = [
        path.name for path in SOURCE.glob("*.yaml") if (COPY / path.name).read_bytes() != path.read_bytes()
    ]
    assert not stale, f"helm/modelship/crds/ differs from crds/ for {stale}: run `make chart-crds`"


def test_the_copies_are_plain_files_not_links() -> None:
    # A symlink would point outside the chart and break `helm package`.
    assert not [p.name for p in COPY.iterdir() if p.is_symlink()]

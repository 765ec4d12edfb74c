"""The rollout of a ModelDeployment as text, for `kubectl modelship status`: pure functions.

The input is the object as the API returns it. Status is written by whichever operator version
runs, and a fresh object has none, so every field is optional here: what is missing is left
out or shown as "-", never a crash.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from modelship.operator import naming, reasons, spec
from modelship.operator.bodies import parse_time

# The operator's main conditions first, in this order; any others after them.
CONDITION_ORDER = reasons.CONDITION_TYPES

DONE, CURRENT, PENDING = "[x]", "[>]", "[ ]"


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> Sequence[Any]:
    return value if isinstance(value, list) else []


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def age(since: datetime, now: datetime) -> str:
    """A duration as kubectl shows ages: 45s, 3m12s, 2h5m, 4d3h."""
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds}s" if seconds else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def _when(value: Any, now: datetime) -> str:
    moment = parse_time(value)
    if moment is None:
        return _text(value)
    return f"{value} ({age(moment, now)} ago)"


def describe_step(step: Any) -> str:
    """One canary step of the spec, in the operator's own words (`spec.Step.describe`)."""
    if not step:
        return "(empty step)"
    try:
        return spec.parse_step(step).describe()
    except (spec.SpecError, TypeError, ValueError):  # a step this operator version does not know
        return json.dumps(step, sort_keys=True, default=str)


def _table(rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    """Rows as left-aligned columns; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        lines.append((indent + "  ".join([*cells, row[-1]])).rstrip())
    return lines


def _revision(revision: Any, version: Any) -> str:
    if not revision and not version:
        return "-"
    if not version:
        return f"revision {revision}"
    return f"version {version} (revision {_text(revision)})"


def _step_lines(steps: Sequence[Any], current: int | None) -> list[str]:
    lines = []
    for index, step in enumerate(steps):
        if current is None:
            lines.append(f"  {index + 1}. {describe_step(step)}")
            continue
        if index < current:
            marker = DONE
        elif index == current:
            marker = CURRENT
        else:
            marker = PENDING
        lines.append(f"  {marker} {index + 1}. {describe_step(step)}")
    return lines


def _progress(rollout: Mapping[str, Any], steps: Sequence[Any], now: datetime) -> str:
    """`k/n done`, as Argo counts (k is the index of the current step), then the current step."""
    step, total = rollout.get("step"), rollout.get("steps")
    if total is None:
        total = len(steps)
    text = f"{_text(step)}/{_text(total)} done"
    if isinstance(step, int) and isinstance(total, int) and step < total:
        known = 0 <= step < len(steps)
        text += f"; now {step + 1}. {describe_step(steps[step])}" if known else f"; now step {step + 1}"
        if rollout.get("stepStartedAt"):
            text += f", since {_when(rollout['stepStartedAt'], now)}"
    return text


def _weight(rollout: Mapping[str, Any]) -> str | None:
    """`25% asked, 25% of ready pods, 3% of requests (measured)`: what a starved canary looks like."""
    asked, by_pods, actual = rollout.get("weight"), rollout.get("replicaWeight"), rollout.get("actualWeight")
    if asked is None and actual is None and by_pods is None:
        return None
    parts = []
    if asked is not None:
        parts.append(f"{_text(asked)}% asked")
    if by_pods is not None:
        parts.append(f"{_text(by_pods)}% of ready pods")
    if actual is not None:
        parts.append(f"{_text(actual)}% of requests (measured)")
    elif rollout.get("canaryRevision"):
        parts.append("requests not measured")
    return ", ".join(parts)


def _analysis_lines(analysis: Mapping[str, Any], now: datetime) -> list[str]:
    parts = []
    if analysis.get("verdict"):
        parts.append(str(analysis["verdict"]))
    failures, runs = analysis.get("failures"), analysis.get("runs")
    if failures is not None:
        parts.append(f"{_text(failures)} failed in a row")
    if analysis.get("inconclusive"):
        parts.append(f"{_text(analysis['inconclusive'])} inconclusive in a row")
    if analysis.get("requests") is not None and analysis.get("canaryRequests") is not None:
        parts.append(
            f"{_text(analysis['canaryRequests'])} of {_text(analysis['requests'])} requests to the canary"
        )
    if runs is not None:
        parts.append(f"{_text(runs)} run(s)")
    if analysis.get("lastRun"):
        parts.append(f"last run {_when(analysis['lastRun'], now)}")
    results = [_obj(result) for result in _list(analysis.get("results"))]
    if not parts and not results and not analysis.get("summary"):
        return []
    lines = [_field("Analysis", ", ".join(parts) if parts else "-")]
    if analysis.get("summary"):
        lines.append(f"  {analysis['summary']}")
    if results:
        rows = [["NAME", "VALUE", "THRESHOLD", "RESULT"]]
        rows += [
            [_text(r.get("name")), _text(r.get("value")), _text(r.get("threshold")), _text(r.get("result"))]
            for r in results
        ]
        lines += _table(rows)
    return lines


def _condition_lines(conditions: Sequence[Any]) -> list[str]:
    found = [_obj(c) for c in conditions if _obj(c).get("type")]
    if not found:
        return []

    def order(condition: Mapping[str, Any]) -> tuple[int, str]:
        kind = str(condition["type"])
        return (CONDITION_ORDER.index(kind) if kind in CONDITION_ORDER else len(CONDITION_ORDER), kind)

    rows = [["TYPE", "STATUS", "REASON", "MESSAGE"]]
    rows += [
        [_text(c["type"]), _text(c.get("status")), _text(c.get("reason")), _text(c.get("message"))]
        for c in sorted(found, key=order)
    ]
    return ["Conditions:", *_table(rows)]


LABEL_WIDTH = 14


def _size(value: Any) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return None
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return None


def _artifact(model: Mapping[str, Any]) -> str:
    """What the stable pods fetched: `s3://b/k (2.1 KiB, sha256 42fce6f8e718, fetched in 0.12s)`."""
    facts = [
        _size(model.get("size")),
        f"sha256 {_text(model['sha256'])[:12]}" if model.get("sha256") else None,
    ]
    seconds = model.get("fetchSeconds")
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        facts.append(f"fetched in {seconds:.2f}s")
    known = [fact for fact in facts if fact]
    return _text(model["uri"]) + (f" ({', '.join(known)})" if known else "")


def _field(label: str, value: str) -> str:
    return f"{label + ':':<{LABEL_WIDTH}}{value}"


def _abort_text(rollout: Mapping[str, Any]) -> str:
    abort = _obj(rollout.get("abort"))
    why = (
        f"{_text(abort.get('reason'))}: {_text(abort.get('message'))}"
        if abort
        else _text(rollout.get("abortReason"))
    )
    return f"revision {_text(rollout.get('abortedRevision'))}: {why}"


def _autoscaling_lines(spec_scaling: Mapping[str, Any], scaling: Mapping[str, Any]) -> list[str]:
    """`3.2/2 in-flight, 3 → 4 replicas (min 1, max 6)`, and the HPA's problem on a line of its own."""
    if not spec_scaling:
        return []
    text = _text(scaling.get("load") or "no reading yet")
    current, desired = scaling.get("currentReplicas"), scaling.get("desiredReplicas")
    if desired is not None:
        text += f", {_text(current)} → {_text(desired)}" if current != desired else f", {_text(desired)}"
        text += " replicas"
    text += (
        f" (min {_text(spec_scaling.get('minReplicas', 1))}, max {_text(spec_scaling.get('maxReplicas'))})"
    )
    lines = [_field("Autoscaling", text)]
    problem = _obj(scaling.get("problem"))
    if problem:
        lines.append(f"  {_text(problem.get('reason'))}: {_text(problem.get('message'))}")
    return lines


def format_rollout(md: Mapping[str, Any], *, now: datetime) -> str:
    """The status block of one ModelDeployment, in the spirit of `kubectl argo rollouts get`."""
    metadata, spec, status = _obj(md.get("metadata")), _obj(md.get("spec")), _obj(md.get("status"))
    rollout = _obj(status.get("rollout"))
    spec_rollout = _obj(spec.get("rollout"))
    steps = _list(_obj(spec_rollout.get("canary")).get("steps"))
    in_progress = bool(rollout.get("canaryRevision"))

    lines = [
        _field("Name", _text(metadata.get("name"))),
        _field("Namespace", _text(metadata.get("namespace"))),
    ]
    phase = status.get("phase")
    lines.append(_field("Phase", _text(phase) if phase else "- (no status reported yet)"))
    lines.append(_field("Strategy", _text(rollout.get("strategy") or spec_rollout.get("strategy"))))

    # An operator without canary rollouts still reports the serving model in status.model.
    served = _obj(status.get("model"))
    lines.append(
        _field(
            "Stable",
            _revision(
                rollout.get("stableRevision") or served.get("revision"),
                rollout.get("stableVersion") or served.get("version"),
            ),
        )
    )
    if served.get("uri"):
        lines.append(_field("Artifact", _artifact(served)))
    if in_progress:
        lines.append(_field("Canary", _revision(rollout["canaryRevision"], rollout.get("canaryVersion"))))
    else:
        lines.append(_field("Canary", "- (no rollout in progress)"))

    step = rollout.get("step")
    if in_progress and (isinstance(step, int) or rollout.get("steps") is not None):
        lines.append(_field("Step", _progress(rollout, steps, now)))
    if steps:
        current = step if in_progress and isinstance(step, int) else None
        lines.append("Steps:" if in_progress else _field("Steps", "(of the next rollout)"))
        lines += _step_lines(steps, current)

    weight = _weight(rollout)
    if weight is not None:
        lines.append(_field("Weight", weight))
    if rollout.get("mirror"):
        copied = f"{_text(rollout['mirror'])}% of the stable revision's requests copied"
        lines.append(_field("Shadow", copied))
    if rollout.get("traffic"):
        lines.append(_field("Traffic", str(rollout["traffic"])))
    if rollout.get("paused") or rollout.get("pauseReason"):
        lines.append(_field("Paused", _text(rollout.get("pauseReason") or "yes")))

    lines += _analysis_lines(_obj(rollout.get("analysis")), now)

    if rollout.get("abortedRevision") or rollout.get("abort") or rollout.get("abortReason"):
        lines.append(_field("Aborted", _abort_text(rollout)))

    if rollout.get("retiring"):
        retiring = f"revision {rollout['retiring']}, kept a while after the promotion"
        if rollout.get("promotedAt"):
            retiring += f" at {_when(rollout['promotedAt'], now)}"
        lines.append(_field("Retiring", retiring))

    pending = _obj(metadata.get("annotations")).get(naming.ANNOTATION_ACTION)
    handled = rollout.get("handledAction")
    if pending and pending != handled:
        lines.append(_field("Action", f"{pending} (asked, not yet acted on)"))
    elif handled:
        lines.append(_field("Last action", f"{handled} (acted on)"))
    if rollout.get("message"):
        lines.append(_field("Message", str(rollout["message"])))

    lines += _autoscaling_lines(_obj(spec.get("autoscaling")), _obj(status.get("autoscaling")))
    lines += _condition_lines(_list(status.get("conditions")))
    return "\n".join(lines) + "\n"

"""Whether a server's receivers serve, in the words of their workload's and pods' status:
ready replicas of the current generation, or why not (unschedulable, image pulls, crash
loops, failing readiness probes). Pure."""

from __future__ import annotations

from typing import Any

Body = dict[str, Any]

_WAITING_REASONS = (
    "ImagePullBackOff",
    "ErrImagePull",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
)


def pod_problems(pods: list[Body]) -> list[str]:
    """Why pods are not ready, in the words of their status: unschedulable, image pulls,
    crash loops, failing readiness probes."""
    found: list[str] = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name, status = pod["metadata"]["name"], pod.get("status") or {}
        conditions = {c.get("type"): c for c in status.get("conditions") or []}
        scheduled = conditions.get("PodScheduled") or {}
        if scheduled.get("status") == "False":
            found.append(f"{name}: {scheduled.get('reason')}: {scheduled.get('message', '')}")
            continue
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in _WAITING_REASONS:
                found.append(f"{name}: {waiting['reason']}: {waiting.get('message', '')}".strip())
                break
            terminated = (container.get("lastState") or {}).get("terminated") or {}
            if not container.get("ready") and terminated.get("reason"):
                found.append(
                    f"{name}: restarted {container.get('restartCount', 0)} times, last "
                    f"{terminated['reason']} (exit {terminated.get('exitCode')})"
                )
                break
            if container.get("started") and not container.get("ready"):
                found.append(f"{name}: running, readiness probe failing")
                break
    return [p.rstrip(": ") for p in found]


def serving(
    workload: Body | None, pods: list[Body], replicas: int, kind: str, name: str
) -> tuple[bool, str, str]:
    """Whether the server's receivers serve: (ready, reason, message)."""
    if replicas == 0:
        return False, "NoReplicas", "replicas is 0; nothing serves"
    if not workload:
        return False, "WorkloadPending", f"waiting for {kind} {name}"
    meta, status = workload["metadata"], workload.get("status") or {}
    want = int((workload.get("spec") or {}).get("replicas") or 0)
    if want != replicas or int(status.get("observedGeneration") or 0) < int(
        meta.get("generation") or 0
    ):
        return False, "Progressing", f"{kind} {name} is taking the new spec"
    ready = int(status.get("readyReplicas") or 0)
    updated = status.get("updatedReplicas")
    if ready >= replicas and (updated is None or int(updated) >= replicas):
        return True, "Serving", f"{ready}/{replicas} replicas ready"
    problems = pod_problems(pods)
    detail = ("; " + "; ".join(problems[:3])) if problems else ""
    return False, "ReplicasNotReady", f"{ready}/{replicas} replicas ready{detail}"[:1000]

"""The scheduling contract shared by the simulator (`sim`) and the real engine (`real`).

Pure Python: no torch, simpy or hydra, so a policy runs unchanged on both clocks.
"""

from policies.batch import Batch, Granularity, Position, Stage
from policies.decision import CONTINUE, Continue, Decision, Merge, Resume, RunBatch
from policies.fcfs import FCFS
from policies.qllm import QLLM
from policies.queues import Queue, Queues
from policies.request import Priority, Request
from policies.state import MAX_DECISIONS_PER_POINT, PolicyError, SchedulerState, Transition
from policies.view import Policy, SchedulerView

__all__ = [
    "CONTINUE",
    "FCFS",
    "MAX_DECISIONS_PER_POINT",
    "QLLM",
    "Batch",
    "Continue",
    "Decision",
    "Granularity",
    "Merge",
    "Policy",
    "PolicyError",
    "Position",
    "Priority",
    "Queue",
    "Queues",
    "Request",
    "Resume",
    "RunBatch",
    "SchedulerState",
    "SchedulerView",
    "Stage",
    "Transition",
]

"""Workloads: ShareGPT lengths, arrival processes, and the trace files both engines replay."""

from sim.workload.config import WorkloadConfig, WorkloadError
from sim.workload.generate import generate_trace
from sim.workload.lengths import load_lengths
from sim.workload.trace import TraceError, read_trace, replayed_workload, to_requests, trace_rate, write_trace

__all__ = ["TraceError", "WorkloadConfig", "WorkloadError", "generate_trace", "load_lengths", "read_trace",
           "replayed_workload", "to_requests", "trace_rate", "write_trace"]

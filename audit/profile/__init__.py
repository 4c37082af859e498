"""The per-epsilon risk profile as resumable tasks: ``tasks`` (what runs), ``executor`` (where it runs and the task
store), ``run`` (``run_profile``), ``schema`` (the frozen results of ``profile.json``), ``distributed`` (Dask)."""

from dpaudit.audit.profile.executor import Executor, InProcessExecutor, TaskStore
from dpaudit.audit.profile.run import plan_training, run_profile
from dpaudit.audit.profile.schema import Profile, ProfileConfig
from dpaudit.audit.profile.tasks import AttackTask, BoundsTask, DataSpec, MiaAuditTask, Task, TrainTask

__all__ = [
    "AttackTask",
    "BoundsTask",
    "DataSpec",
    "Executor",
    "InProcessExecutor",
    "MiaAuditTask",
    "Profile",
    "ProfileConfig",
    "Task",
    "TaskStore",
    "TrainTask",
    "plan_training",
    "run_profile",
]

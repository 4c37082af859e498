"""dpaudit: privacy-risk auditing for differentially private medical-imaging models.

Sub-packages:

* :mod:`dpaudit.bounds`: epsilon, worst-case and relaxed reconstruction-robustness (ReRo) upper bounds and
  membership-inference trade-off curves from (noise multiplier, sampling probability, steps). Pure numpy/scipy.
* :mod:`dpaudit.attacks`: the empirical side: imprint-layer gradient inversion under DP-SGD, membership inference.
* :mod:`dpaudit.audit`: DP-SGD training with Opacus, utility, the per-epsilon risk profile and the PDF report.
* :mod:`dpaudit.cli`: the ``dpaudit`` command.
"""

from dpaudit._version import __version__
from dpaudit.errors import DpAuditError

__all__ = ["DpAuditError", "__version__"]

"""Demographic differentials: verification error rates per attribute group at one global threshold.

:mod:`~frx_plugin.differentials.rates` holds the definitions (FNMR and FMR per group, max/min
ratios, FDR, GARBE, the identity bootstrap, the too-small rules) and their computation;
:mod:`~frx_plugin.differentials.curves` the per-group DET data.
"""

from frx_plugin.differentials.curves import GroupScoreCurves, group_score_curves
from frx_plugin.differentials.rates import (
    AttributeDifferentials,
    DemographicDifferentials,
    GroupRates,
    attribute_groups,
    demographic_differentials,
)

__all__ = ["AttributeDifferentials", "DemographicDifferentials", "GroupRates", "GroupScoreCurves",
           "attribute_groups", "demographic_differentials", "group_score_curves"]

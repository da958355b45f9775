"""What can be built: one architecture (`Arch`, the published variants) and the search space."""

from latbench.space.arch import (
    ATTENTION_STAGES,
    FAMILY,
    N_STAGES,
    NAMED_ARCHS,
    Arch,
    StageArch,
    check_resolution,
    named_arch,
)
from latbench.space.search_space import SearchSpace, StageSpace

__all__ = ["ATTENTION_STAGES", "FAMILY", "N_STAGES", "NAMED_ARCHS", "Arch", "SearchSpace", "StageArch", "StageSpace",
           "check_resolution", "named_arch"]

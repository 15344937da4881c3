"""The diffusion families, one module each, and (from ``llamadiff.bodies``) the rules that say
which bodies run as which.

A family (``base.Family``) brings option defaults and rules, the engine ``Sequence`` of a
prompt (Cython: ``llamadiff._block``, ``llamadiff._full``) and the contexts it needs. A new
family is one Cython sequence module, one module here and an entry in ``FAMILIES``
(docs/ARCHITECTURE.md, "A new family").
"""

from llamadiff.families.base import ContextShape, Family, ModelDefaults, Setup
from llamadiff.families.block import BlockFamily
from llamadiff.families.canvas import CanvasFamily
from llamadiff.families.full import FullFamily
from llamadiff.bodies import block_diffusion_problem, check_runnable, family_of

__all__ = ["FAMILIES", "Family", "ContextShape", "ModelDefaults", "Setup", "BlockFamily", "FullFamily", "CanvasFamily",
           "block_diffusion_problem", "check_runnable", "family_of"]

#: by ``Model.family``
FAMILIES = {family.name: family for family in (BlockFamily(), FullFamily(), CanvasFamily())}

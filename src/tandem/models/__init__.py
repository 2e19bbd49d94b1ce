"""Model families and the names ``--model`` accepts."""

from tandem.models.base import Family, FitContext
from tandem.models.gbdt import GBDT
from tandem.models.linear import Linear
from tandem.models.mlp import MLP

__all__ = ["FAMILIES", "GBDT", "MLP", "Family", "FitContext", "Linear"]

#: ``--model`` name -> family; ``auto`` tries them in this order
FAMILIES: dict[str, type[Family]] = {f.name: f for f in (Linear, GBDT, MLP)}

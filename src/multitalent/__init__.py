"""MultiTalent: one 3D segmentation network trained on many partially-labelled CT datasets."""

from multitalent.errors import UserInputError

__version__ = "0.1.0"
__all__ = ["UserInputError", "__version__"]

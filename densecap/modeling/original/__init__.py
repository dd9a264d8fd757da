"""The original DenseCap (Lua/Torch7, jcjohnson/densecap), reproduced: its Torch7 checkpoints
converted into project checkpoints and an inference path equal to its ``run_model.lua``.

* :func:`convert_torch7_checkpoint` (``tools/convert_checkpoint.py``): ``.t7`` / ``.t7.zip`` ->
  project checkpoint dict for ``configs/densecap_vgg16_original.yaml``;
* :class:`OriginalDenseCapModel` (``MODEL.META_ARCHITECTURE: "DenseCapOriginal"``);
* :mod:`.ops`: the original's box conventions, NMS, ``BoxToAffine`` + stnbhwd sampler and
  ``image.scale``.
"""
from . import ops  # noqa: F401
from .convert import CONVERTER_VERSION, cached_conversion, convert_torch7_checkpoint, is_torch7_path  # noqa: F401
from .model import OriginalDenseCapModel, OriginalRPNHead, VGG16OriginalBackbone  # noqa: F401
from .torch7 import Torch7FormatError, load_torch7  # noqa: F401

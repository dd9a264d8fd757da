from .boxes import (  # noqa: F401
    apply_deltas,
    area_xyxy,
    clip_xyxy,
    cxcywh_to_xyxy,
    encode_deltas,
    iou_xyxy_np,
    xywh_to_xyxy,
    xyxy_to_cxcywh,
    xyxy_to_xywh,
)
from .instances import Instances  # noqa: F401
